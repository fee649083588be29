"""The admin listener (``gateway.debug_port``, loopback by default): health, metrics, stats,
hot model load/unload, the nodes (``app.nodesadmin``).

Theory of operation
-------------------
The admin port runs the same ``HttpConnection`` as the public port, with its own route
table, so every limit and deadline applies to it too. It is never on the user path: nginx
exposes only the public port, and none of these paths exist in the public route table.

``AdminRouter.resolve`` guards every admin request, routed or not, before any handler, with
``policy.adminaccess.check_access`` (loopback ``Host``, no foreign ``Origin``, the admin
token). It also marks the request as an admin one, so ``LiveState`` leaves it out of the
user traffic numbers (a scraper polling /metrics is not load).

No ``Access-Control-Allow-Origin`` header is ever sent from here.
"""

from __future__ import annotations

import asyncio
from functools import partial
from typing import Any

import orjson

from clawproxy import __version__
from clawproxy.app.nodesadmin import (
    add_node,
    delete_node,
    list_nodes,
    node_action,
    parse_node_names,
)
from clawproxy.app.services import Services
from clawproxy.errors import InvalidRequest
from clawproxy.http.request import Request
from clawproxy.http.router import Router, RouteTable
from clawproxy.http.server import Handler, HttpConnection
from clawproxy.openai.mapping import parse_json_body, parse_model_name
from clawproxy.policy.adminaccess import allowed_hosts, check_access
from clawproxy.telemetry.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from clawproxy.telemetry.metrics import render


class AdminRouter(Router):
    """The route table behind the access checks (every admin request passes them)."""

    def __init__(
        self,
        table: RouteTable,
        hosts: frozenset[str],
        token: str | None,
        *,
        prefixes: RouteTable | None = None,
    ) -> None:
        super().__init__(table, prefixes)
        self._hosts = hosts
        self._token = token

    def resolve(self, request: Request) -> Handler:
        # Operators' scrapes are not traffic: keep them out of the request metrics.
        request.counted = False
        check_access(self._hosts, self._token, request)
        return super().resolve(request)


async def admin_health(svc: Services, request: Request, conn: HttpConnection) -> None:
    """Status, default model, uptime, live counts, and whether Ollama answers (2 s max).

    Always asks Ollama afresh (a monitor wants the present); the answer is then the one
    ``/stats`` and the UI show, so all three say the same."""
    body = svc.state.snapshot(svc.loop.time())
    body["status"], body["upstream"] = await svc.status(fresh=True)
    conn.send(request, 200 if body["status"] == "ok" else 503, orjson.dumps(body))


async def metrics(svc: Services, request: Request, conn: HttpConnection) -> None:
    text = render(svc.state, svc.loop.time(), draining=svc.draining, version=__version__)
    conn.send(request, 200, text, content_type=METRICS_CONTENT_TYPE)


async def stats_body(svc: Services) -> dict[str, Any]:
    """The snapshot shared by admin ``/stats`` and the UI: no prompt text, no addresses.

    Live state, the (cached) model details and Ollama's (cached) reachability, with the
    status that follows from it by the same rule as admin ``/health``."""
    body = svc.state.stats(svc.loop.time())
    body["version"] = __version__
    # Both may ask Ollama (each bounded by a short timeout): side by side, not in turn.
    body["model_details"], (body["status"], body["upstream"]) = await asyncio.gather(
        svc.models.details(), svc.status()
    )
    return body


async def stats(svc: Services, request: Request, conn: HttpConnection) -> None:
    """One JSON snapshot for dashboards."""
    conn.send(request, 200, orjson.dumps(await stats_body(svc)))


async def model_load(svc: Services, request: Request, conn: HttpConnection) -> None:
    # A name, never a host or URL, so an admin call cannot make Ollama fetch from anywhere
    # (RELIABILITY 3, SSRF).
    fields = parse_admin_body(request.body, required=True)
    name = parse_model_name(fields.get("model"))
    nodes = parse_node_names(fields.get("nodes"))
    with svc.upstream_step():
        result = await svc.models.load(name, nodes)
    conn.send(request, 200, orjson.dumps(result))


async def model_unload(svc: Services, request: Request, conn: HttpConnection) -> None:
    fields = parse_admin_body(request.body, required=False)
    raw = fields.get("model")
    name = None if raw is None else parse_model_name(raw)
    nodes = parse_node_names(fields.get("nodes"))
    with svc.upstream_step():
        result = await svc.models.unload(name, nodes)
    conn.send(request, 200, orjson.dumps(result))


def parse_admin_body(body: bytes, *, required: bool) -> dict[str, object]:
    """An admin JSON body with its ``model`` field (which may be absent when not required)."""
    if not body.strip():
        if required:
            raise InvalidRequest("the body must be a JSON object with a 'model' field")
        return {}
    parsed = parse_json_body(body)
    if not isinstance(parsed, dict):
        raise InvalidRequest("the body must be a JSON object with a 'model' field")
    if parsed.get("model") is None and required:
        raise InvalidRequest("'model' is required", param="model")
    return parsed


def admin_router(svc: Services) -> AdminRouter:
    """The admin port's routes, bound to this gateway's services."""
    table: RouteTable = {
        b"/health": {b"GET": partial(admin_health, svc)},
        b"/metrics": {b"GET": partial(metrics, svc)},
        b"/stats": {b"GET": partial(stats, svc)},
        b"/v1/model/load": {b"POST": partial(model_load, svc)},
        b"/v1/model/unload": {b"POST": partial(model_unload, svc)},
        b"/nodes": {b"GET": partial(list_nodes, svc), b"POST": partial(add_node, svc)},
    }
    # /nodes/{name}/drain and /nodes/{name}: the node's name is the rest of the path.
    prefixes: RouteTable = {
        b"/nodes/": {b"POST": partial(node_action, svc), b"DELETE": partial(delete_node, svc)}
    }
    gateway = svc.config.gateway
    return AdminRouter(
        table, allowed_hosts(gateway.debug_host), gateway.admin_token, prefixes=prefixes
    )
