"""TLS credentials for the service, its client and the health check, from PEM files.

Torch-free on purpose: ``python -m layermask_service.healthcheck`` imports this module every few
seconds in Docker and Kubernetes probes.

The server's credentials are *dynamic*: gRPC asks :class:`ServerCertificates` for the certificate
configuration on each new TLS handshake, and it re-reads the PEM files when their size, mtime or
inode changed (checked at most every :data:`CHECK_INTERVAL` seconds). A renewed certificate
(cert-manager, a Kubernetes Secret update) is therefore served to new connections without a
restart; connections already open keep the certificate they were set up with.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from pathlib import Path

import grpc

CHECK_INTERVAL = 1.0  # seconds between looks at the certificate files, at most
log = logging.getLogger("layermask.tls")

Fingerprint = tuple[int, int, int, int] | None


def fingerprint(path: str | Path) -> Fingerprint:
    """What changes when a file is rewritten or replaced (inode, device, size, mtime); ``None`` if it is gone.

    ``os.stat`` follows symlinks, so a Kubernetes Secret update (an atomic swap of its ``..data``
    symlink) changes the inode.
    """
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_dev, stat.st_size, stat.st_mtime_ns


def check_pem(cert_file: str, key_file: str, ca_file: str | None = None, what: str = "tls") -> None:
    """Fail early, naming the settings, when the certificate, key or CA file is not valid PEM or the key
    does not match the certificate (gRPC would only fail later, on each handshake)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert_file, key_file)
    except (OSError, ssl.SSLError) as error:
        raise ValueError(f"{what}_cert_file/{what}_key_file: not a matching PEM certificate and key "
                         f"({cert_file}, {key_file}): {error}") from None
    if ca_file is not None:
        try:
            context.load_verify_locations(cafile=ca_file)
        except (OSError, ssl.SSLError) as error:
            raise ValueError(f"{what}_client_ca_file: not PEM CA certificates ({ca_file}): {error}") from None


class ServerCertificates:
    """The fetcher behind :func:`grpc.dynamic_ssl_server_credentials`: returns a new certificate
    configuration when the files changed since the last one, ``None`` (keep the current one) otherwise."""

    def __init__(self, cert_file: str, key_file: str, client_ca_file: str | None = None) -> None:
        self.files = tuple(f for f in (cert_file, key_file, client_ca_file) if f is not None)
        self.cert_file, self.key_file, self.client_ca_file = cert_file, key_file, client_ca_file
        self._lock = threading.Lock()
        self._seen = self._fingerprints()
        self._checked = time.monotonic()
        self.initial = self._configuration()

    def _fingerprints(self) -> tuple[Fingerprint, ...]:
        return tuple(fingerprint(f) for f in self.files)

    def _configuration(self) -> grpc.ServerCertificateConfiguration:
        root = Path(self.client_ca_file).read_bytes() if self.client_ca_file else None
        pair = (Path(self.key_file).read_bytes(), Path(self.cert_file).read_bytes())
        return grpc.ssl_server_certificate_configuration([pair], root_certificates=root)

    def __call__(self) -> grpc.ServerCertificateConfiguration | None:
        with self._lock:
            now = time.monotonic()
            if now - self._checked < CHECK_INTERVAL:
                return None
            self._checked = now
            seen = self._fingerprints()
            if seen == self._seen:
                return None
            self._seen = seen
            try:  # a half-written renewal fails here; the next change is picked up again
                check_pem(self.cert_file, self.key_file, self.client_ca_file)
                configuration = self._configuration()
            except (OSError, ValueError) as error:
                log.warning("keeping the current TLS certificate: cannot load the changed files: %s", error)
                return None
        log.info("TLS certificate files changed: new connections get the new certificate")
        return configuration


def server_credentials(cert_file: str, key_file: str, client_ca_file: str | None = None) -> grpc.ServerCredentials:
    """TLS server credentials; with ``client_ca_file``, clients must present a certificate it signed (mTLS)."""
    check_pem(cert_file, key_file, client_ca_file)
    certificates = ServerCertificates(cert_file, key_file, client_ca_file)
    return grpc.dynamic_ssl_server_credentials(certificates.initial, certificates,
                                               require_client_authentication=client_ca_file is not None)


def channel_credentials(ca_file: str | None = None, cert_file: str | None = None,
                        key_file: str | None = None) -> grpc.ChannelCredentials:
    """Client TLS credentials: trust ``ca_file`` (default: the system's roots); with ``cert_file`` and
    ``key_file``, present that client certificate (mTLS)."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs both tls_cert_file and tls_key_file")
    def read(name: str | None) -> bytes | None:
        return None if name is None else Path(name).read_bytes()

    return grpc.ssl_channel_credentials(root_certificates=read(ca_file), private_key=read(key_file),
                                        certificate_chain=read(cert_file))


def channel_options(server_name: str | None) -> list[tuple[str, str]]:
    """Check the server's certificate for ``server_name`` instead of the target's host (e.g. a probe
    dialling ``localhost`` of a certificate issued for ``layermask.example``)."""
    return [] if not server_name else [("grpc.ssl_target_name_override", server_name)]
