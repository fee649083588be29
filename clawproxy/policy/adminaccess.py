"""Who may use the admin port: a loopback ``Host``, no foreign ``Origin``, the admin token.

Theory of operation
-------------------
Every admin request, routed or not, passes ``check_access`` before any handler:

1. ``Host`` must name loopback (``localhost``, ``127.0.0.1``, ``[::1]``, any port) or the
   configured ``debug_host``, else 421. A DNS-rebinding page reaches 127.0.0.1 under the
   attacker's name, and this is where that name shows.
2. An ``Origin`` header, which browsers send on cross-origin and most non-GET requests, must
   be a loopback origin too, else 403: no web page may drive the admin port.
3. With ``gateway.admin_token`` set, ``Authorization: Bearer TOKEN`` is required (401
   otherwise). Compared as SHA-256 digests with ``hmac.compare_digest``: bytes, constant
   time, and no exception for non-ASCII input.
"""

from __future__ import annotations

import hashlib
import hmac

from clawproxy.errors import AuthenticationFailed, Forbidden, MisdirectedRequest
from clawproxy.http.request import Request

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
# Binding to every address is not a name a client uses: it never widens the allow-list.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "[::]"})


def split_authority(authority: str) -> tuple[str, str] | None:
    """The lower-case host and the port ("" when absent) of ``host[:port]`` /
    ``[v6][:port]``; None if malformed."""
    authority = authority.lower()
    if authority.startswith("["):
        end = authority.find("]")
        if end < 0:
            return None
        host, rest = authority[: end + 1], authority[end + 1 :]
    else:
        host, colon, port = authority.partition(":")
        rest = colon + port
    port = rest[1:]
    if not host or (rest and not (rest[0] == ":" and port.isascii() and port.isdigit())):
        return None
    return host, port


def host_of(authority: str) -> str | None:
    """The lower-case host of ``host[:port]`` / ``[v6][:port]``; None if malformed."""
    parts = split_authority(authority)
    return None if parts is None else parts[0]


def allowed_hosts(debug_host: str) -> frozenset[str]:
    configured = debug_host.lower()
    if ":" in configured and not configured.startswith("["):
        configured = f"[{configured}]"  # an IPv6 address, as it appears in a Host header
    if configured in WILDCARD_HOSTS:
        return LOOPBACK_HOSTS
    return LOOPBACK_HOSTS | {configured}


def origin_host(origin: str) -> str | None:
    scheme, sep, rest = origin.partition("://")
    if not sep or scheme.lower() not in ("http", "https") or "/" in rest or "@" in rest:
        return None
    return host_of(rest)


def token_digest(token: bytes) -> bytes:
    return hashlib.sha256(token).digest()


def check_access(hosts: frozenset[str], token: str | None, request: Request) -> None:
    """Host, Origin and token checks for one admin request; raises on refusal.

    ``hosts``: ``allowed_hosts(gateway.debug_host)``; ``token``: ``gateway.admin_token``."""
    host = request.header(b"host")
    # HTTP/1.0 may omit Host; browsers never do, so a missing one is not a rebinding.
    if host is not None and host_of(host.decode("latin-1")) not in hosts:
        raise MisdirectedRequest("the admin port answers only to localhost")
    origin = request.header(b"origin")
    if origin is not None and origin_host(origin.decode("latin-1")) not in hosts:
        raise Forbidden("cross-origin requests to the admin port are refused")
    if token is not None:
        values = [v for k, v in request.headers if k == b"authorization"]
        scheme, _, presented = values[0].partition(b" ") if len(values) == 1 else (b"", b"", b"")
        # Both sides hashed: equal lengths, so compare_digest's time reveals nothing.
        match = hmac.compare_digest(
            token_digest(presented.lstrip(b" ")), token_digest(token.encode())
        )
        if scheme.lower() != b"bearer" or not match:
            raise AuthenticationFailed(
                "the admin port requires 'Authorization: Bearer <gateway.admin_token>'",
                code="invalid_admin_token",
                headers=((b"www-authenticate", b'Bearer realm="clawproxy-admin"'),),
            )
