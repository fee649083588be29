"""The public route table and the small endpoints: /health and /v1/models.

Only what the gateway translates is routed; nothing under ``/api/*`` is ever proxied to
Ollama (its management API has no authentication). Handlers are bound to the gateway's
``Services`` when the table is built.
"""

from __future__ import annotations

from functools import partial

import orjson

from clawproxy.app.chat import chat_completions
from clawproxy.app.services import Services
from clawproxy.app.ui import ui_routes
from clawproxy.http.request import Request
from clawproxy.http.router import Router, RouteTable
from clawproxy.http.server import HttpConnection


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
    """OpenAI's model list, from Ollama's ``/api/tags``."""
    svc.guard.check(request)
    conn.send(request, 200, orjson.dumps({"object": "list", "data": await svc.model_list()}))


def public_router(svc: Services) -> Router:
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
    return Router(table)
