"""The TLS client side of an ``https://`` Ollama node: one ``ssl.SSLContext`` per node.

Theory of operation: Ollama itself speaks plain HTTP; a node reached over ``https://``
sits behind a TLS-terminating proxy (Caddy, nginx, a service mesh). ``client_context``
builds the context the node's ``UpstreamPool`` hands to ``create_connection``, from the
standard library only:

- the system's trusted CAs by default (``ssl.create_default_context``: TLS 1.2 or later,
  certificate and host name checked);
- ``ca_file``: trust that PEM bundle *instead* (a private CA), so a certificate from any
  public CA is not enough to impersonate the node;
- ``cert_file`` (and ``key_file``, unless the key is in ``cert_file``): the client
  certificate chain, for proxies that require mutual TLS;
- ``verify=False``: no certificate or host name check at all. This is for labs only: the
  link is then encrypted but anyone on the path can pose as the node.

Every problem with a file is a ``ValueError`` that names the option and the path, never the
file's content (a key must not end up in a log), so the config loader can report it.
"""

from __future__ import annotations

import ssl

__all__ = ["client_context"]

# Only HTTP/1.1 is spoken upstream; saying so stops a proxy from offering h2.
ALPN_PROTOCOLS = ["http/1.1"]


def client_context(
    *, ca_file: str | None, cert_file: str | None, key_file: str | None, verify: bool
) -> ssl.SSLContext:
    """A client ``SSLContext`` for one node (see the module docstring for each option)."""
    if key_file is not None and cert_file is None:
        raise ValueError("tls key_file is set but cert_file is not")
    for option, path in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        if path is not None:
            _check_readable(option, path)
    if ca_file is None:
        context = ssl.create_default_context()
    else:
        try:
            context = ssl.create_default_context(cafile=ca_file)
        except ssl.SSLError as exc:
            raise ValueError(
                f"tls ca_file {ca_file!r} holds no usable PEM certificate ({_reason(exc)})"
            ) from None
    if cert_file is not None:
        try:
            context.load_cert_chain(cert_file, key_file, password=_no_password)
        except _EncryptedKey:
            raise ValueError(
                f"tls key {key_file or cert_file!r} is encrypted; give an unencrypted key"
            ) from None
        except ssl.SSLError as exc:
            where = f"cert_file {cert_file!r}" + (f" / key_file {key_file!r}" if key_file else "")
            raise ValueError(
                f"tls {where}: not a PEM certificate chain with its matching private key "
                f"({_reason(exc)})"
            ) from None
    if not verify:
        # check_hostname first: CERT_NONE is refused while it is on.
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(ALPN_PROTOCOLS)
    return context


class _EncryptedKey(Exception):
    """Raised by the password callback: without it OpenSSL would prompt on the terminal."""


def _no_password() -> str:
    raise _EncryptedKey


def _check_readable(option: str, path: str) -> None:
    try:
        with open(path, "rb") as handle:
            handle.read(1)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ValueError(f"tls {option} {path!r} cannot be read: {reason}") from None


def _reason(exc: ssl.SSLError) -> str:
    # ``reason`` is OpenSSL's short code (e.g. NO_CERTIFICATE_OR_CRL_FOUND); never content.
    return str(exc.reason or exc.strerror or type(exc).__name__)
