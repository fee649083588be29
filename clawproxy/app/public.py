"""The public route table and the small endpoints: /health, /v1/models and /v1/models/{id}.

Only what the gateway translates is routed; nothing under ``/api/*`` is ever proxied to
Ollama (its management API has no authentication). Handlers are bound to the gateway's
``Services`` when the table is built.

``PublicRouter.resolve`` runs before any handler, routed path or not (so a 404 is covered
too), and is where the port-wide rules live:

- every response carries an ``x-request-id`` (the client's own ``X-Request-Id`` when it
  is sane, else a fresh one: ``http.request.request_id_for``), which the access line
  ends with;
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
from clawproxy.errors import NotFound
from clawproxy.http.request import Request, request_id_for
from clawproxy.http.router import Deferred, Router, RouteTable
from clawproxy.http.server import Handler, HttpConnection
from clawproxy.openai.models import find_model, model_id
from clawproxy.policy.crosssite import CrossSite, check_json_type

UI_ROOT = b"/ui"
UI_PREFIX = b"/ui/"
# Routes a browser app may call (the API and the UI's data): Origin and CORS apply here.
BROWSER_PREFIXES = (b"/v1/", b"/ui/api/")


class PublicRouter(Router):
    """The public route table behind the port-wide checks (see the module docstring)."""

    def __init__(
        self, table: RouteTable, cross: CrossSite, *, ui: bool, prefixes: RouteTable | None = None
    ) -> None:
        super().__init__(table, prefixes)
        self.cross = cross
        self._ui = ui

    def resolve(self, request: Request) -> Handler:
        # First, so every answer below (421, 403, 404...) carries it too.
        request.request_id = request_id_for(request.header(b"x-request-id"))
        path = request.path
        if self._ui and (path == UI_ROOT or path.startswith(UI_PREFIX)):
            request.response_headers = SECURITY_HEADERS
        cross = self.cross
        cross.check_host(request)
        if path.startswith(BROWSER_PREFIXES):
            if request.method == b"OPTIONS":
                # A preflight only where browser apps are allowed; elsewhere no route has
                # OPTIONS, so the table answers 404 or 405 and nothing runs.
                found = self.methods_for(path)
                if cross.cors and found is not None:
                    return partial(preflight, cross, route_methods(found[0]))
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
    await svc.check_client(request)
    conn.send(request, 200, orjson.dumps({"object": "list", "data": await svc.model_list()}))


async def get_model(svc: Services, request: Request, conn: HttpConnection) -> None:
    """One model object of the list above, by id (``/v1/models/{id}``); 404 for any other."""
    await svc.check_client(request)
    wanted = model_id(request.path_rest)
    found = None if wanted is None else find_model(await svc.model_list(), wanted)
    if found is None:
        # The id is echoed only when it passed model_id (printable ASCII).
        named = f"model '{wanted}'" if wanted is not None else "that model"
        raise NotFound(f"{named} not found on this gateway", param="model", code="model_not_found")
    conn.send(request, 200, orjson.dumps(found))


def public_router(svc: Services) -> PublicRouter:
    """The public port's routes for this gateway."""
    health_handler = partial(health, svc)
    table: RouteTable = {
        b"/v1/chat/completions": {b"POST": partial(chat_completions, svc)},
        # Imported on first use: most deployments call chat alone (``http.router``).
        b"/v1/completions": {b"POST": Deferred("clawproxy.app.completions", "completions", svc)},
        b"/v1/embeddings": {b"POST": Deferred("clawproxy.app.embeddings", "embeddings", svc)},
        b"/v1/responses": {b"POST": Deferred("clawproxy.app.responses", "responses", svc)},
        b"/v1/models": {b"GET": partial(list_models, svc)},
        b"/health": {b"GET": health_handler, b"HEAD": health_handler},
    }
    if svc.config.ui.enabled:
        # A gateway with the UI off never reads its files.
        table.update(ui_routes(svc))
    cross = CrossSite.from_config(svc.config.server, keys_enabled=svc.guard.keys.enabled)
    # Model ids hold '/' (hf.co/org/model:Q4): the one route matched by prefix (http.router).
    prefixes: RouteTable = {b"/v1/models/": {b"GET": partial(get_model, svc)}}
    return PublicRouter(table, cross, ui=svc.config.ui.enabled, prefixes=prefixes)
