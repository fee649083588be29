"""Throwaway TLS certificates for tests, made with the ``openssl`` command line.

Theory of operation: ``session_certs()`` makes, once per test session, in a temporary
directory removed at exit: a test CA; a server certificate it signed for ``127.0.0.1`` and
``localhost`` (both in subjectAltName, which is what host name checks read); a client
certificate it signed (``clientAuth``, for mutual TLS); and a second, unrelated CA, for the
"wrong CA" cases. Keys are P-256 (quick to make) and unencrypted. ``server_context`` builds
what a TLS simulator listens with. Only the ``openssl`` binary is needed: the
``cryptography`` package is deliberately not a dependency.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import ssl
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["TlsCerts", "make_certs", "server_context", "session_certs"]

OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"
# Long enough for any test run, short enough that a leaked file is worthless.
VALID_DAYS = 2
# Seconds one openssl call may take (each is milliseconds on a quiet machine).
OPENSSL_TIMEOUT = 30.0
_KEY = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
_CA_EXTENSIONS = [
    "-addext",
    "basicConstraints=critical,CA:TRUE",
    "-addext",
    "keyUsage=critical,keyCertSign,cRLSign",
]
# Leaf extensions: strict verifiers (Python 3.13's VERIFY_X509_STRICT) want the key ids.
_LEAF_COMMON = (
    "basicConstraints=critical,CA:FALSE\n"
    "keyUsage=critical,digitalSignature\n"
    "subjectKeyIdentifier=hash\n"
    "authorityKeyIdentifier=keyid,issuer\n"
)
_SERVER_EXTENSIONS = _LEAF_COMMON + (
    "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n"
)
_CLIENT_EXTENSIONS = _LEAF_COMMON + "extendedKeyUsage=clientAuth\n"


@dataclass(frozen=True)
class TlsCerts:
    """Paths (as ``str``, what ``ssl`` and config files take) of one set of test certs."""

    ca_file: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    other_ca_file: str


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(
        [OPENSSL, *args], cwd=cwd, check=True, capture_output=True, timeout=OPENSSL_TIMEOUT
    )


def _ca(directory: Path, name: str, subject: str) -> None:
    _openssl(
        "req", "-x509", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.pem",
        "-days", str(VALID_DAYS), "-subj", subject, *_CA_EXTENSIONS,
        cwd=directory,
    )  # fmt: skip


def _leaf(directory: Path, name: str, subject: str, extensions: str) -> None:
    (directory / f"{name}.ext").write_text(extensions)
    _openssl(
        "req", "-new", *_KEY, "-keyout", f"{name}.key", "-out", f"{name}.csr",
        "-subj", subject,
        cwd=directory,
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-out", f"{name}.pem", "-days", str(VALID_DAYS),
        "-extfile", f"{name}.ext",
        cwd=directory,
    )  # fmt: skip


def make_certs(directory: Path) -> TlsCerts:
    """Write a fresh CA, server and client certificate, and a second CA, into ``directory``."""
    _ca(directory, "ca", "/CN=clawproxy test CA")
    _ca(directory, "other-ca", "/CN=clawproxy unrelated CA")
    _leaf(directory, "server", "/CN=localhost", _SERVER_EXTENSIONS)
    _leaf(directory, "client", "/CN=clawproxy test client", _CLIENT_EXTENSIONS)
    return TlsCerts(
        ca_file=str(directory / "ca.pem"),
        server_cert=str(directory / "server.pem"),
        server_key=str(directory / "server.key"),
        client_cert=str(directory / "client.pem"),
        client_key=str(directory / "client.key"),
        other_ca_file=str(directory / "other-ca.pem"),
    )


@functools.cache
def session_certs() -> TlsCerts:
    """One set of certificates per test session (made on first use, removed at exit)."""
    directory = Path(tempfile.mkdtemp(prefix="clawproxy-tls-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    return make_certs(directory)


def server_context(certs: TlsCerts, *, require_client_cert: bool = False) -> ssl.SSLContext:
    """A server-side context with the test server certificate; optionally mutual TLS
    (clients must present a certificate signed by the test CA)."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.server_cert, certs.server_key)
    if require_client_cert:
        context.load_verify_locations(certs.ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    return context
