"""The shipped TorchServe config keeps the management API private and model registration off (CVE-2023-43654)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from layermask_service.torchserve.process import parse_properties
from layermask_service.torchserve.resources import CONFIG, read_resource

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def shipped() -> dict[str, str]:
    return parse_properties(read_resource(CONFIG))


def test_management_api_listens_on_loopback_only() -> None:
    properties = shipped()
    assert urlsplit(properties["management_address"]).hostname in LOOPBACK
    assert properties["grpc_management_address"] in LOOPBACK


def test_models_cannot_be_registered_from_urls() -> None:
    properties = shipped()
    assert properties["enable_model_api"].strip().lower() == "false"
    patterns = [re.compile(p, re.IGNORECASE) for p in properties["allowed_urls"].split(",")]
    for remote in ("http://attacker.example/evil.mar", "https://attacker.example/evil.mar",
                   "s3://bucket/evil.mar", "HTTP://169.254.169.254/latest/meta-data"):
        assert not any(p.fullmatch(remote) for p in patterns), remote
