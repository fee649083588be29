"""The public route table and the small endpoints: /health and /v1/models.

Only what the gateway translates is routed; nothing under ``/api/*`` is ever proxied to
Ollama (its management API has no authentication). Handlers are bound to the gateway's
``Services`` when the table is built.

``PublicRouter.resolve`` runs before any handler, routed path or not (so a 404 is covered
too), and is where the port-wide rules live:

- every response under ``/ui`` carries the UI's security headers (``ui.SECURITY_HEADERS``),
  errors included, so a 404 there is as inert as a page;
- ``Host`` against ``server.allowed_hosts`` (421), then, for ``/v1/*`` and the UI's data
  (``/ui/api/*``), ``Origin`` (403, or the CORS headers of an allowed one), the media type
  of a POST (415) and, with ``server.cors.allow_origins`` set, ``OPTIONS`` preflights
  (``policy.crosssite`` decides; the router only applies its verdict).
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import partial

import orjson

from clawproxy.app.chat import chat_completions
from clawproxy.app.services import Services
from clawproxy.app.ui import SECURITY_HEADERS, ui_routes
from clawproxy.http.request import Request
from clawproxy.http.router import Router, RouteTable
from clawproxy.http.server import Handler, HttpConnection
from clawproxy.policy.crosssite import CrossSite, check_json_type

UI_ROOT = b"/ui"
UI_PREFIX = b"/ui/"
# Routes a browser app may call (the API and the UI's data): Origin and CORS apply here.
BROWSER_PREFIXES = (b"/v1/", b"/ui/api/")


class PublicRouter(Router):
    """The public route table behind the port-wide checks (see the module docstring)."""

    def __init__(self, table: RouteTable, cross: CrossSite, *, ui: bool) -> None:
        super().__init__(table)
        self.cross = cross
        self._ui = ui

    def resolve(self, request: Request) -> Handler:
        path = request.path
        if self._ui and (path == UI_ROOT or path.startswith(UI_PREFIX)):
            request.response_headers = SECURITY_HEADERS
        cross = self.cross
        cross.check_host(request)
        if path.startswith(BROWSER_PREFIXES):
            if request.method == b"OPTIONS":
                # A preflight only where browser apps are allowed; elsewhere no route has
                # OPTIONS, so the table answers 404 or 405 and nothing runs.
                methods = self.table.get(path)
                if cross.cors and methods is not None:
                    return partial(preflight, cross, route_methods(methods))
                return super().resolve(request)
            cors = cross.check_origin(request)
            if cors:
                request.response_headers += cors
            if request.method == b"POST":
                check_json_type(request)
        return super().resolve(request)


def route_methods(methods: Iterable[bytes]) -> list[bytes]:
    """A route's methods as a preflight lists them: HEAD wherever GET is (``Router``)."""
    listed = list(methods)
    if b"GET" in listed and b"HEAD" not in listed:
        listed.append(b"HEAD")
    return listed


async def preflight(
    cross: CrossSite, methods: list[bytes], request: Request, conn: HttpConnection
) -> None:
    """A CORS preflight: 204 for an allowed origin, else 403. Not traffic, and no key:
    browsers never send one on a preflight."""
    request.counted = False
    conn.send(request, 204, b"", headers=cross.preflight(request, methods))


async def health(svc: Services, request: Request, conn: HttpConnection) -> None:
    """Liveness for load balancers: answers without asking Ollama anything."""
    body = orjson.dumps(
        {
            "status": "draining" if svc.draining else "ok",
            "model": svc.state.model,
            "uptime_seconds": int(svc.state.uptime(svc.loop.time())),
        }
    )
    conn.send(request, 200, body)


async def list_models(svc: Services, request: Request, conn: HttpConnection) -> None:
    """OpenAI's model list, from Ollama's ``/api/tags`` (the catalog's cached copy)."""
    svc.guard.check(request)
    conn.send(request, 200, orjson.dumps({"object": "list", "data": await svc.model_list()}))


def public_router(svc: Services) -> PublicRouter:
    """The public port's routes for this gateway."""
    health_handler = partial(health, svc)
    table: RouteTable = {
        b"/v1/chat/completions": {b"POST": partial(chat_completions, svc)},
        b"/v1/models": {b"GET": partial(list_models, svc)},
        b"/health": {b"GET": health_handler, b"HEAD": health_handler},
    }
    if svc.config.ui.enabled:
        # A gateway with the UI off never reads its files.
        table.update(ui_routes(svc))
    cross = CrossSite.from_config(svc.config.server, keys_enabled=svc.guard.keys.enabled)
    return PublicRouter(table, cross, ui=svc.config.ui.enabled)
