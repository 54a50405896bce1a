# `make run` and `make test` each set up .venv on their own, so either works first on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install run demo test lint bench clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(INSTALLED)

install: $(INSTALLED)

# The main job. For now the masking demo; the gRPC service replaces it in issue #4.
run: demo

demo: $(INSTALLED)
	$(BIN)/layermask demo --output demo.png

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint
	$(BIN)/pytest

bench: $(INSTALLED)
	$(BIN)/python bench/masked_forward.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache demo.png
