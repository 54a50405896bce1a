"""TLS, mTLS and bearer tokens (docs/security.md), over real TLS on loopback with certificates made here.

(Over 300 lines: the TLS, mTLS and token cases share one set of test certificate authorities
and the servers built on them.)
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import logging
import os
import re
import secrets
import signal
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from skimage import data

from layermask_service import tls
from layermask_service.client import ExplainClient
from layermask_service.proto import explain_pb2 as pb
from layermask_service.proto import explain_pb2_grpc as pb_grpc
from layermask_service.settings import load_settings
from tests.helpers.service import LOOPBACK, RunningServer, wait_for

# --- a throwaway PKI -------------------------------------------------------------------------------------------

Issued = tuple[ec.EllipticCurvePrivateKey, x509.Certificate]


def _certificate(name: str, key: ec.EllipticCurvePrivateKey, issuer: Issued | None, *, ca: bool = False,
                 server: bool = False) -> x509.Certificate:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    signing_key, issuer_name = (key, subject) if issuer is None else (issuer[0], issuer[1].subject)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
               .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer[0].public_key()), critical=False)
    if ca:
        builder = builder.add_extension(x509.KeyUsage(
            digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
            key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False),
            critical=True)
    else:
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def issue(name: str, issuer: Issued | None = None, **kinds: bool) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    return key, _certificate(name, key, issuer, **kinds)


def write_pem(directory: Path, stem: str, issued: Issued) -> tuple[str, str]:
    """``(cert_file, key_file)`` of ``issued``, written under ``directory``."""
    key, cert = issued
    cert_file, key_file = directory / f"{stem}.crt", directory / f"{stem}.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file)


@dataclasses.dataclass(frozen=True)
class Pki:
    directory: Path
    ca: str              # the CA of the server and the client certificates
    other_ca: str        # an unrelated CA
    server: tuple[str, str]
    client: tuple[str, str]
    other_client: tuple[str, str]  # a client certificate of other_ca
    other_server: tuple[str, str]  # a server certificate of other_ca (a "renewal" under another CA)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    directory = tmp_path_factory.mktemp("pki")
    ca, other_ca = issue("layermask test CA", ca=True), issue("unrelated CA", ca=True)
    return Pki(directory=directory, ca=write_pem(directory, "ca", ca)[0],
               other_ca=write_pem(directory, "other-ca", other_ca)[0],
               server=write_pem(directory, "server", issue("localhost", ca, server=True)),
               client=write_pem(directory, "client", issue("a client", ca)),
               other_client=write_pem(directory, "other-client", issue("another client", other_ca)),
               other_server=write_pem(directory, "other-server", issue("localhost", other_ca, server=True)))


def write_tokens(path: Path, *tokens: str) -> str:
    """Replace ``path`` atomically (as a Kubernetes Secret update does) with a token file of ``tokens``."""
    staged = path.with_suffix(".new")
    staged.write_text("# layermask bearer tokens\n\n" + "".join(f"{t}\n" for t in tokens))
    os.replace(staged, path)
    return str(path)


# --- helpers ---------------------------------------------------------------------------------------------------


def list_models_code(target: str, **client: Any) -> grpc.StatusCode:
    with ExplainClient(target, timeout=10, **client) as c:
        try:
            c.list_models()
        except grpc.RpcError as error:
            return error.code()
    return grpc.StatusCode.OK


def rpc_error(target: str, **client: Any) -> grpc.RpcError:
    with ExplainClient(target, timeout=10, **client) as c, pytest.raises(grpc.RpcError) as raised:
        c.list_models()
    return raised.value


def https_scrape(port: int, ca: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    context = ssl.create_default_context(cafile=ca)
    with urllib.request.urlopen(f"https://localhost:{port}/metrics", timeout=10, context=context) as response:
        text = response.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


REFUSED_LIST_MODELS = ("layermask_requests_total", (("code", "UNAUTHENTICATED"), ("rpc", "ListModels")))


@dataclasses.dataclass
class Secured:
    server: RunningServer
    token_file: Path
    tokens: tuple[str, ...]
    pki: Pki

    def client(self, token_file: str | None = None, **extra: Any) -> dict[str, Any]:
        return {"tls_ca_file": self.pki.ca, "token_file": token_file, **extra}


@pytest.fixture
def secured(pki: Pki, tmp_path: Path) -> Iterator[Secured]:
    """A TLS server that wants a bearer token, with /metrics over HTTPS (cheap: about 0.5 s to start)."""
    tokens = (secrets.token_urlsafe(24), secrets.token_urlsafe(24))
    token_file = tmp_path / "tokens"
    write_tokens(token_file, *tokens)
    settings = dataclasses.replace(LOOPBACK, tls_cert_file=pki.server[0], tls_key_file=pki.server[1],
                                   metrics_tls_cert_file=pki.server[0], metrics_tls_key_file=pki.server[1],
                                   auth_token_file=str(token_file))
    running = RunningServer(settings)
    try:
        yield Secured(running, token_file, tokens, pki)
    finally:
        running.stop()


def token_file(directory: Path, token: str) -> str:
    return write_tokens(directory / f"client-{secrets.token_hex(4)}", token)


# --- tokens ----------------------------------------------------------------------------------------------------


def test_each_accepted_token_is_served(secured: Secured, tmp_path: Path) -> None:
    for token in secured.tokens:
        with ExplainClient(secured.server.target, timeout=30, **secured.client(token_file(tmp_path, token))) as c:
            assert [m.name for m in c.list_models().models] == ["efficientnet_lite0"]


@pytest.mark.parametrize("presented", [None, "wrong", "Basic"])
def test_missing_or_wrong_token_is_unauthenticated_and_counted(secured: Secured, tmp_path: Path,
                                                               presented: str | None) -> None:
    before = https_scrape(secured.server.server.metrics_port, secured.pki.ca).get(REFUSED_LIST_MODELS, 0.0)
    if presented == "Basic":  # the right token, the wrong scheme
        channel = grpc.secure_channel(secured.server.target, tls.channel_credentials(secured.pki.ca))
        with channel, pytest.raises(grpc.RpcError) as raised:
            pb_grpc.ExplainServiceStub(channel).ListModels(
                pb.ListModelsRequest(), metadata=[("authorization", f"Basic {secured.tokens[0]}")], timeout=10)
        error: grpc.RpcError = raised.value
    else:
        wrong = None if presented is None else token_file(tmp_path, secrets.token_urlsafe(24))
        error = rpc_error(secured.server.target, **secured.client(wrong))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ("bearer token is required" if presented != "wrong" else "invalid bearer token") in error.details()
    assert not any(token in error.details() for token in secured.tokens)
    after = https_scrape(secured.server.server.metrics_port, secured.pki.ca)[REFUSED_LIST_MODELS]
    assert after == before + 1


def test_a_streaming_call_without_token_is_refused_before_any_work(secured: Secured) -> None:
    channel = grpc.secure_channel(secured.server.target, tls.channel_credentials(secured.pki.ca))
    with channel, pytest.raises(grpc.RpcError) as raised:
        list(pb_grpc.ExplainServiceStub(channel).ExplainStream(pb.ExplainRequest(image=b"not even an image"),
                                                               timeout=10))
    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_health_and_reflection_need_no_token(secured: Secured) -> None:
    channel = grpc.secure_channel(secured.server.target, tls.channel_credentials(secured.pki.ca))
    with channel:
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        answers = list(reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(
            list_services="")]), timeout=10))
    names = {s.name for s in answers[0].list_services_response.service}
    assert {"layermask.v1.ExplainService", "grpc.health.v1.Health"} <= names


def test_rotated_token_file_takes_effect_without_restart(secured: Secured, tmp_path: Path,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    old, new = token_file(tmp_path, secured.tokens[0]), token_file(tmp_path, secrets.token_urlsafe(24))
    target = secured.server.target
    assert list_models_code(target, **secured.client(new)) == grpc.StatusCode.UNAUTHENTICATED
    rotated = Path(new).read_text().split()[-1]
    write_tokens(secured.token_file, rotated)
    wait_for(lambda: list_models_code(target, **secured.client(new)) == grpc.StatusCode.OK, bound=30,
             what="the rotated token to be accepted", interval=0.2)
    assert list_models_code(target, **secured.client(old)) == grpc.StatusCode.UNAUTHENTICATED
    assert "reloaded" in caplog.text
    assert not any(token in caplog.text for token in (*secured.tokens, rotated))


def test_reload_as_on_sighup_and_a_failed_reload_keeps_the_tokens(secured: Secured, tmp_path: Path,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    explain_server = secured.server.server
    fresh = secrets.token_urlsafe(24)
    write_tokens(secured.token_file, fresh)
    assert explain_server.reload_tokens() is True  # what the SIGHUP handler calls: no waiting for the poll
    target, fresh_client = secured.server.target, secured.client(token_file(tmp_path, fresh))
    assert list_models_code(target, **fresh_client) == grpc.StatusCode.OK
    for breakage in ("empty", "comments only", "gone"):
        if breakage == "gone":
            secured.token_file.unlink()
        else:
            secured.token_file.write_text("" if breakage == "empty" else "# nothing\n\n")
        assert explain_server.reload_tokens() is False
        assert list_models_code(target, **fresh_client) == grpc.StatusCode.OK
    assert "keeping the previous 1 bearer token(s)" in caplog.text
    assert caplog.records and not any(token in caplog.text for token in (*secured.tokens, fresh))


def test_tokens_work_over_plaintext_too(tmp_path: Path) -> None:
    """The client sends its token as per-call metadata, which gRPC allows on plaintext channels."""
    token = secrets.token_urlsafe(24)
    settings = dataclasses.replace(LOOPBACK, auth_token_file=write_tokens(tmp_path / "tokens", token))
    running = RunningServer(settings)
    try:
        assert list_models_code(running.target, token_file=token_file(tmp_path, token)) == grpc.StatusCode.OK
        assert list_models_code(running.target) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        running.stop()


# --- TLS and mTLS ----------------------------------------------------------------------------------------------


def test_tls_needs_a_tls_client_trusting_the_right_ca(secured: Secured, tmp_path: Path) -> None:
    good_token = token_file(tmp_path, secured.tokens[0])
    assert list_models_code(secured.server.target, token_file=good_token) == grpc.StatusCode.UNAVAILABLE  # plaintext
    assert list_models_code(secured.server.target, tls_ca_file=secured.pki.other_ca,
                            token_file=good_token) == grpc.StatusCode.UNAVAILABLE


def test_metrics_are_served_over_https_only(secured: Secured) -> None:
    port = secured.server.server.metrics_port
    assert any(name == "layermask_build_info" for name, _ in https_scrape(port, secured.pki.ca))
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read()


@pytest.fixture
def mutual(pki: Pki) -> Iterator[RunningServer]:
    settings = dataclasses.replace(LOOPBACK, tls_cert_file=pki.server[0], tls_key_file=pki.server[1],
                                   tls_client_ca_file=pki.ca)
    running = RunningServer(settings)
    try:
        yield running
    finally:
        running.stop()


def test_mtls_needs_a_client_certificate_of_the_client_ca(mutual: RunningServer, pki: Pki) -> None:
    target = mutual.target
    assert list_models_code(target, tls_ca_file=pki.ca, tls_cert_file=pki.client[0],
                            tls_key_file=pki.client[1]) == grpc.StatusCode.OK
    assert list_models_code(target, tls_ca_file=pki.ca) == grpc.StatusCode.UNAVAILABLE
    assert list_models_code(target, tls_ca_file=pki.ca, tls_cert_file=pki.other_client[0],
                            tls_key_file=pki.other_client[1]) == grpc.StatusCode.UNAVAILABLE


def test_a_renewed_server_certificate_is_served_without_restart(pki: Pki, tmp_path: Path) -> None:
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_file.write_bytes(Path(pki.server[0]).read_bytes())
    key_file.write_bytes(Path(pki.server[1]).read_bytes())
    running = RunningServer(dataclasses.replace(LOOPBACK, tls_cert_file=str(cert_file), tls_key_file=str(key_file)))
    try:
        assert list_models_code(running.target, tls_ca_file=pki.ca) == grpc.StatusCode.OK
        for source, target in ((pki.other_server[0], cert_file), (pki.other_server[1], key_file)):
            target.with_suffix(".new").write_bytes(Path(source).read_bytes())
            os.replace(target.with_suffix(".new"), target)
        wait_for(lambda: list_models_code(running.target, tls_ca_file=pki.other_ca) == grpc.StatusCode.OK,
                 bound=30, what="new connections to get the renewed certificate", interval=0.3)
    finally:
        running.stop()


# --- settings --------------------------------------------------------------------------------------------------


def test_security_settings_come_from_file_environment_and_flags(pki: Pki, tmp_path: Path) -> None:
    config = tmp_path / "server.toml"
    config.write_text(f'[server]\ntls_cert_file = "{pki.server[0]}"\ntls_key_file = "{pki.server[1]}"\n')
    tokens = write_tokens(tmp_path / "tokens", "t0ken")
    settings = load_settings(config, environ={"LAYERMASK_TLS_CLIENT_CA_FILE": pki.ca,
                                              "LAYERMASK_METRICS_TLS_CERT_FILE": ""},
                             overrides={"auth_token_file": tokens})
    assert (settings.tls_cert_file, settings.tls_client_ca_file, settings.auth_token_file) == \
        (pki.server[0], pki.ca, tokens)
    assert settings.metrics_tls_cert_file is None  # an empty variable means unset
    assert load_settings(environ={}).tls_cert_file is None and load_settings(environ={}).auth_token_file is None


@pytest.mark.parametrize(("values", "message"), [
    ({"tls_cert_file": "SERVER_CERT"}, "tls_cert_file and tls_key_file go together"),
    ({"metrics_tls_key_file": "SERVER_KEY"}, "metrics_tls_cert_file and metrics_tls_key_file go together"),
    ({"tls_client_ca_file": "CA"}, "tls_client_ca_file .mTLS. needs tls_cert_file"),
    ({"tls_cert_file": "MISSING", "tls_key_file": "SERVER_KEY"}, "tls_cert_file: no readable file"),
    ({"auth_token_file": "EMPTY"}, "auth_token_file: no token"),
    ({"auth_token_file": "COMMENTS"}, "auth_token_file: no token"),
    ({"auth_token_file": "SPACES"}, "auth_token_file: line 1: a token must be printable ASCII"),
])
def test_bad_security_settings_name_the_setting(pki: Pki, tmp_path: Path, values: dict[str, str],
                                                message: str) -> None:
    (tmp_path / "empty").write_text("")
    (tmp_path / "comments").write_text("# only\n\n   \n")
    (tmp_path / "spaces").write_text("two words\n")
    files = {"SERVER_CERT": pki.server[0], "SERVER_KEY": pki.server[1], "CA": pki.ca,
             "MISSING": str(tmp_path / "missing.crt"), "EMPTY": str(tmp_path / "empty"),
             "COMMENTS": str(tmp_path / "comments"), "SPACES": str(tmp_path / "spaces")}
    environ = {f"LAYERMASK_{name.upper()}": files[value] for name, value in values.items()}
    with pytest.raises(ValueError, match=message) as raised:
        load_settings(environ=environ)
    assert "two words" not in str(raised.value)


def test_a_key_that_does_not_match_its_certificate_is_named(pki: Pki) -> None:
    with pytest.raises(ValueError, match="tls_cert_file/tls_key_file: not a matching PEM"):
        tls.check_pem(pki.server[0], pki.client[1])
    with pytest.raises(ValueError, match="metrics_tls_cert_file"):
        tls.check_pem(pki.ca, pki.server[1], what="metrics_tls")


# --- processes: the health check, the CLI client, `layermask serve` and SIGHUP -----------------------------------


def test_healthcheck_against_tls(secured: Secured) -> None:
    command = [sys.executable, "-m", "layermask_service.healthcheck", "--target", secured.server.target]

    def run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60, env={**os.environ, **env})

    assert run("--tls-ca-file", secured.pki.ca).returncode == 0
    assert run(LAYERMASK_HEALTHCHECK_TLS_CA_FILE=secured.pki.ca).returncode == 0
    plaintext = run("--timeout", "2")
    assert plaintext.returncode == 1 and "UNAVAILABLE" in plaintext.stderr


def test_cli_client_with_token_and_ca(secured: Secured, tmp_path: Path) -> None:
    photo = tmp_path / "cat.jpg"
    Image.fromarray(data.chelsea()).save(photo)
    tokens = token_file(tmp_path, secured.tokens[1])
    result = subprocess.run([sys.executable, "-m", "layermask_service", "client", "explain", str(photo),
                             "--target", secured.server.target, "--tls-ca-file", secured.pki.ca,
                             "--token-file", tokens, "--samples", "8", "--segmentation", "grid:patch_size=56",
                             "-o", str(tmp_path / "out.png")], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.png").read_bytes().startswith(b"\x89PNG")
    assert not any(token in result.stdout + result.stderr for token in secured.tokens)


class _Lines:
    """A process's output, read by a thread so that waiting for a line has a bound."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert process.stdout is not None
        self.thread = threading.Thread(target=lambda: self.lines.extend(process.stdout or ()), daemon=True)
        self.thread.start()

    @property
    def text(self) -> str:
        return "".join(self.lines)


def test_serve_reloads_tokens_on_sighup_and_never_logs_them(pki: Pki, tmp_path: Path) -> None:
    first, second = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    tokens = write_tokens(tmp_path / "tokens", first)
    command = [sys.executable, "-m", "layermask_service", "serve", "--host", "127.0.0.1", "--port", "0",
               "--metrics-host", "127.0.0.1", "--metrics-port", "0", "--tls-cert-file", pki.server[0],
               "--tls-key-file", pki.server[1], "--auth-token-file", tokens]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = _Lines(process)
    try:
        wait_for(lambda: process.poll() is not None or "listening on" in output.text, bound=120,
                 what="layermask serve to listen")
        listening = re.search(r"listening on 127\.0\.0\.1:(\d+) \(TLS, bearer token required\)", output.text)
        assert listening, output.text
        target = f"127.0.0.1:{listening.group(1)}"
        first_client = {"tls_ca_file": pki.ca, "token_file": token_file(tmp_path, first)}
        second_client = {"tls_ca_file": pki.ca, "token_file": token_file(tmp_path, second)}
        # Authenticated calls may meet UNAVAILABLE while the model loads; never UNAUTHENTICATED.
        assert list_models_code(target, **first_client) != grpc.StatusCode.UNAUTHENTICATED
        write_tokens(tmp_path / "tokens", second)
        process.send_signal(signal.SIGHUP)
        wait_for(lambda: "SIGHUP: reloading" in output.text, bound=30, what="the SIGHUP to be handled")
        assert list_models_code(target, **second_client) != grpc.StatusCode.UNAUTHENTICATED
        assert list_models_code(target, **first_client) == grpc.StatusCode.UNAUTHENTICATED
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, output.text
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(30)
    output.thread.join(10)
    assert "reloaded" in output.text and first not in output.text and second not in output.text
