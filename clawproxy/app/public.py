"""The public route table and the small endpoints: /health and /v1/models.

Only what the gateway translates is routed; nothing under ``/api/*`` is ever proxied to
Ollama (its management API has no authentication). Routes match the raw path exactly, so
no encoding of ``..`` can reach another route.
"""

from __future__ import annotations

import datetime
from typing import TYPE_CHECKING, Any

import orjson

from clawproxy.app.chat import chat_completions
from clawproxy.errors import MethodNotAllowed, NotFound, UpstreamUnavailable
from clawproxy.ollama.catalog import fetch_tags
from clawproxy.policy.guard import check_client

if TYPE_CHECKING:
    from clawproxy.config.loading import Config
    from clawproxy.gateway import Gateway, Handler
    from clawproxy.http.server import HttpConnection, Request


async def health(gw: Gateway, request: Request, conn: HttpConnection) -> None:
    """Liveness for load balancers: answers without asking Ollama anything."""
    body = orjson.dumps(
        {
            "status": "draining" if gw.draining else "ok",
            "model": gw.state.model,
            "uptime_seconds": int(gw.state.uptime(gw.loop.time())),
        }
    )
    conn.send(request, 200, body)


async def list_models(gw: Gateway, request: Request, conn: HttpConnection) -> None:
    """OpenAI's model list, from Ollama's ``/api/tags``."""
    check_client(gw, request)
    body = await fetch_tags(gw)
    conn.send(request, 200, orjson.dumps({"object": "list", "data": tags_to_models(body)}))


def tags_to_models(body: bytes) -> list[dict[str, Any]]:
    try:
        tags = orjson.loads(body)
        models = tags["models"] or []
        return [model_entry(m) for m in models]
    except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
        raise UpstreamUnavailable("Ollama sent an unreadable model list") from None


def model_entry(model: dict[str, Any]) -> dict[str, Any]:
    name = str(model["name"])
    namespace, slash, _ = name.partition("/")
    return {
        "id": name,
        "object": "model",
        "created": unix_seconds(model.get("modified_at")),
        "owned_by": namespace if slash else "library",
    }


def unix_seconds(stamp: object) -> int:
    """Go's RFC 3339 time with up to 9 fractional digits -> Unix seconds (0 if unreadable)."""
    if not isinstance(stamp, str):
        return 0
    main, dot, rest = stamp.partition(".")
    if dot:
        # Python parses at most 6 fractional digits; drop the rest, keep the zone.
        digits = len(rest) - len(rest.lstrip("0123456789"))
        stamp = f"{main}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        return int(datetime.datetime.fromisoformat(stamp).timestamp())
    except ValueError:
        return 0


def not_allowed(allowed: list[bytes]) -> MethodNotAllowed:
    allow = b", ".join(allowed)
    return MethodNotAllowed(
        f"method not allowed here; use {allow.decode()}", headers=((b"allow", allow),)
    )


class Router:
    """Exact-path route table: path -> method -> handler; 404 and 405 otherwise."""

    def __init__(self, table: dict[bytes, dict[bytes, Handler]]) -> None:
        self.table = table

    def resolve(self, gw: Gateway, request: Request) -> Handler:
        """The handler for ``request``; raises 404 or 405 (and what a subclass checks).

        Synchronous, so the connection awaits the handler itself: one coroutine fewer
        per request than a routing coroutine around it."""
        methods = self.table.get(request.path)
        if methods is None:
            raise NotFound(f"no route for {request.path.decode('latin-1')!r}", code="not_found")
        handler = methods.get(request.method)
        if handler is None:
            raise not_allowed(list(methods))
        return handler


def public_router(config: Config) -> Router:
    """The public port's routes for this configuration."""
    table: dict[bytes, dict[bytes, Handler]] = {
        b"/v1/chat/completions": {b"POST": chat_completions},
        b"/v1/models": {b"GET": list_models},
        b"/health": {b"GET": health, b"HEAD": health},
    }
    if config.ui.enabled:
        # Imported here: ui imports admin, which imports this module; and a gateway with the
        # UI off never reads its files.
        from clawproxy.app.ui import ui_routes

        table.update(ui_routes())
    return Router(table)
