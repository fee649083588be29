"""The admin listener (``gateway.debug_port``, loopback by default): health, metrics, stats,
hot model load/unload.

Theory of operation
-------------------
The admin port runs the same ``HttpConnection`` as the public port, with its own route
table, so every limit and deadline applies to it too. It is never on the user path: nginx
exposes only the public port, and none of these paths exist in the public route table.

``AdminRouter.handle`` guards every admin request, routed or not, before any handler:

1. ``Host`` must name loopback (``localhost``, ``127.0.0.1``, ``[::1]``, any port) or the
   configured ``debug_host``, else 421. A DNS-rebinding page reaches 127.0.0.1 under the
   attacker's name, and this is where that name shows.
2. An ``Origin`` header, which browsers send on cross-origin and most non-GET requests, must
   be a loopback origin too, else 403: no web page may drive the admin port.
3. With ``gateway.admin_token`` set, ``Authorization: Bearer TOKEN`` is required (401
   otherwise). Compared as SHA-256 digests with ``hmac.compare_digest``: bytes, constant
   time, and no exception for non-ASCII input.

It also marks the request as an admin one, so ``LiveState`` leaves it out of the user
traffic numbers (a scraper polling /metrics is not load).

No ``Access-Control-Allow-Origin`` header is ever sent from here.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import TYPE_CHECKING, Any

import orjson

from clawproxy import __version__
from clawproxy.app.public import Router
from clawproxy.errors import AuthenticationFailed, Forbidden, MisdirectedRequest
from clawproxy.ollama.modelctl import parse_admin_body
from clawproxy.telemetry.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from clawproxy.telemetry.metrics import render

if TYPE_CHECKING:
    from clawproxy.gateway import Gateway, Handler
    from clawproxy.http.server import HttpConnection, Request

LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "[::1]"})
# Binding to every address is not a name a client uses: it never widens the allow-list.
WILDCARD_HOSTS = frozenset({"0.0.0.0", "[::]"})


def host_of(authority: str) -> str | None:
    """The lower-case host of ``host[:port]`` / ``[v6][:port]``; None if malformed."""
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
    return host


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


def check_access(gw: Gateway, request: Request) -> None:
    """Host, Origin and token checks for one admin request; raises on refusal."""
    hosts = allowed_hosts(gw.config.gateway.debug_host)
    host = request.header(b"host")
    # HTTP/1.0 may omit Host; browsers never do, so a missing one is not a rebinding.
    if host is not None and host_of(host.decode("latin-1")) not in hosts:
        raise MisdirectedRequest("the admin port answers only to localhost")
    origin = request.header(b"origin")
    if origin is not None and origin_host(origin.decode("latin-1")) not in hosts:
        raise Forbidden("cross-origin requests to the admin port are refused")
    token = gw.config.gateway.admin_token
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


class AdminRouter(Router):
    """The route table behind the access checks (every admin request passes them)."""

    def resolve(self, gw: Gateway, request: Request) -> Handler:
        # Operators' scrapes are not traffic: keep them out of the request metrics.
        request.counted = False
        check_access(gw, request)
        return super().resolve(gw, request)


async def admin_health(gw: Gateway, request: Request, conn: HttpConnection) -> None:
    """Status, default model, uptime, live counts, and whether Ollama answers (2 s max)."""
    body = gw.state.snapshot(gw.loop.time())
    upstream = await gw.models.upstream_health()
    body["upstream"] = upstream
    if gw.draining:
        body["status"] = "draining"
    else:
        body["status"] = "ok" if upstream["reachable"] else "degraded"
    conn.send(request, 200 if body["status"] == "ok" else 503, orjson.dumps(body))


async def metrics(gw: Gateway, request: Request, conn: HttpConnection) -> None:
    text = render(gw.state, gw.loop.time(), draining=gw.draining, version=__version__)
    conn.send(request, 200, text, content_type=METRICS_CONTENT_TYPE)


def stats_body(gw: Gateway) -> dict[str, Any]:
    """The snapshot shared by admin ``/stats`` and the UI: no prompt text, no addresses."""
    body = gw.state.stats(gw.loop.time())
    body["status"] = "draining" if gw.draining else "ok"
    body["version"] = __version__
    return body


async def stats(gw: Gateway, request: Request, conn: HttpConnection) -> None:
    """One JSON snapshot for dashboards, with the (cached) model details."""
    body = stats_body(gw)
    body["model_details"] = await gw.models.details()
    conn.send(request, 200, orjson.dumps(body))


async def model_load(gw: Gateway, request: Request, conn: HttpConnection) -> None:
    name = parse_admin_body(request.body, required=True)
    conn.send(request, 200, orjson.dumps(await gw.models.load(name)))


async def model_unload(gw: Gateway, request: Request, conn: HttpConnection) -> None:
    name = parse_admin_body(request.body, required=False)
    conn.send(request, 200, orjson.dumps(await gw.models.unload(name)))


_TABLE: dict[bytes, dict[bytes, Handler]] = {
    b"/health": {b"GET": admin_health},
    b"/metrics": {b"GET": metrics},
    b"/stats": {b"GET": stats},
    b"/v1/model/load": {b"POST": model_load},
    b"/v1/model/unload": {b"POST": model_unload},
}
ADMIN = AdminRouter(_TABLE)
