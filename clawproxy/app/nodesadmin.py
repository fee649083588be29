"""The admin port's node API: list, add, drain and remove nodes without a restart.

Theory of operation
-------------------
``GET /nodes`` lists every node (name, url, state, inflight, cap, models, what is loaded,
failures, the last error). ``POST /nodes`` adds one: its body is a node as the config file
writes it, checked by the same loader and rules (``config``), so a node is valid or not
wherever it is written. ``POST /nodes/{name}/drain`` stops new requests to it while running
ones finish; ``DELETE /nodes/{name}`` forgets a drained node once it is idle. A bad change
is refused whole (400, 404 or 409) and the table is untouched. The SIGHUP path
(``Gateway.reload_nodes``) uses the same table operations.

With ``--workers``, these change worker 0 only (the one with the admin port); SIGHUP
reaches every worker.
"""

from __future__ import annotations

from urllib.parse import unquote

import orjson

from clawproxy.app.services import Services
from clawproxy.config import ConfigError, NodeConfig, config_from_mapping
from clawproxy.errors import GatewayError, InvalidRequest, NotFound
from clawproxy.http.request import Request
from clawproxy.http.server import HttpConnection
from clawproxy.nodes.table import NodeChangeError
from clawproxy.openai.mapping import parse_json_body

# How an item of the nodes list is named in the loader's messages ("nodes[0].url: ...").
_LOADER_PREFIX = "nodes[0]."


class Conflict(GatewayError):
    """The node is in a state that forbids the change (409)."""

    status = 409
    err_type = "invalid_request_error"
    default_code = "node_busy"


async def list_nodes(svc: Services, request: Request, conn: HttpConnection) -> None:
    body = {"nodes": svc.nodes.describe(), "queued": svc.nodes.scheduler.waiting}
    conn.send(request, 200, orjson.dumps(body))


async def add_node(svc: Services, request: Request, conn: HttpConnection) -> None:
    spec = parse_node(request.body)
    try:
        node = svc.nodes.add(spec)
    except NodeChangeError as exc:
        raise Conflict(str(exc), code="node_exists") from None
    svc.nodes.start_probing()
    conn.send(request, 201, orjson.dumps({"node": node.name, "status": "added"}))


async def node_action(svc: Services, request: Request, conn: HttpConnection) -> None:
    """``POST /nodes/{name}/drain``."""
    name, _, action = request.path_rest.partition(b"/")
    if action != b"drain":
        raise NotFound("the node actions are POST /nodes/{name}/drain", code="not_found")
    node = svc.nodes.get(node_name(name))
    if node is None:
        raise unknown_node(name)
    svc.nodes.drain(node.name)
    body = {"node": node.name, "status": "draining", "inflight": node.inflight}
    conn.send(request, 200, orjson.dumps(body))


async def delete_node(svc: Services, request: Request, conn: HttpConnection) -> None:
    """``DELETE /nodes/{name}``: only once drained (or disabled) and idle."""
    name = node_name(request.path_rest)
    if svc.nodes.get(name) is None:
        raise unknown_node(request.path_rest)
    try:
        svc.nodes.remove(name)
    except NodeChangeError as exc:
        raise Conflict(str(exc)) from None
    conn.send(request, 200, orjson.dumps({"node": name, "status": "removed"}))


def node_name(raw: bytes) -> str:
    return unquote(raw.decode("latin-1"))


def unknown_node(raw: bytes) -> NotFound:
    shown = raw.decode("latin-1")[:64]
    return NotFound(f"no node named {shown!r}", code="node_not_found")


def parse_node(body: bytes) -> NodeConfig:
    """A node from a JSON body, checked exactly as the config file's ``nodes:`` entries."""
    parsed = parse_json_body(body)
    if not isinstance(parsed, dict):
        raise InvalidRequest("the body must be a JSON object: a node as the config writes it")
    try:
        return config_from_mapping({"nodes": [parsed]}).nodes[0]
    except ConfigError as exc:
        message = str(exc).replace(_LOADER_PREFIX, "").replace("nodes[0]: ", "")
        param = (exc.key or "").replace(_LOADER_PREFIX, "") or None
        raise InvalidRequest(message, param=param) from None


def parse_node_names(raw: object) -> list[str] | None:
    """The ``nodes`` field of a model load/unload body: a list of node names, or absent."""
    if raw is None:
        return None
    if not isinstance(raw, list) or not all(isinstance(n, str) for n in raw) or not raw:
        raise InvalidRequest("'nodes' must be a non-empty list of node names", param="nodes")
    return list(dict.fromkeys(raw))
