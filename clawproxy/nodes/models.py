"""Model control across nodes: hot load and unload, the default model's details, reachability.

Theory of operation
-------------------
A hot load is check, warm, switch. The model must pass the same routing question as a chat
request (``NodeTable.route``: the allow-list, and which nodes serve it); then it is warmed
(``ModelControl.warm``) on the named nodes, or on every routable node that serves it, all
side by side; only when at least one node loaded it is ``LiveState.model`` assigned. That
one assignment is the switch: chat reads the default per request, so requests already
running keep the model they started with. Loads are serialised by a lock, so the default
is the model of the load that finished last, and a load that fails everywhere changes
nothing. Each node's outcome is in the reply.

Reachability for ``/health``, ``/stats`` and the UI: with one node, its ``/api/version``
answer as it always was; with several, reachable when any routable node answers, with each
node's answer beside it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from clawproxy.errors import GatewayError, InvalidRequest, NotFound
from clawproxy.nodes.node import Node
from clawproxy.nodes.table import NodeTable
from clawproxy.ollama.catalog import canonical
from clawproxy.ollama.modelctl import HEALTH_TIMEOUT_S


class DefaultModel(Protocol):
    """Where the default model lives (``LiveState``): read per request, set by a load."""

    model: str


class ModelLoads:
    """Hot load/unload over a node table, switching the default model."""

    def __init__(self, table: NodeTable, default: DefaultModel) -> None:
        self._table = table
        self._default = default
        self._lock = asyncio.Lock()

    async def load(self, name: str, node_names: list[str] | None = None) -> dict[str, Any]:
        targets = await self._targets(name, node_names)
        async with self._lock:
            results, loaded = await _on_each(targets, "loaded", lambda n: n.control.warm(name))
            # Warm now: routing prefers these nodes for the model (no cold load).
            warmed = {result["node"] for result in loaded}
            for node in targets:
                if node.name in warmed:
                    node.loaded = node.loaded | {canonical(name)}
            default = self._default
            previous, default.model = default.model, name
        return {
            "status": "loaded",
            "model": name,
            "previous_model": previous,
            "keep_alive": loaded[0]["keep_alive"],
            "load_ms": max(result["load_ms"] for result in loaded),
            "nodes": results,
        }

    async def unload(self, name: str | None, node_names: list[str] | None = None) -> dict[str, Any]:
        name = self._default.model if name is None else name
        targets = await self._targets(name, node_names)
        async with self._lock:
            results, _ = await _on_each(targets, "unloaded", lambda n: n.control.unload(name))
        return {
            "status": "unloaded",
            "model": name,
            "default_model": self._default.model,
            "nodes": results,
        }

    async def details(self) -> dict[str, Any]:
        """The default model's details from the first routable node."""
        routable = self._table.routable
        node = routable[0] if routable else self._table.first
        return await node.control.details(self._default.model)

    async def health(self, timeout: float = HEALTH_TIMEOUT_S) -> dict[str, Any]:
        """Whether Ollama answers: one node's answer, or any node's with each beside it."""
        nodes = list(self._table.nodes())
        if len(nodes) == 1:
            return await nodes[0].control.upstream_health(timeout)
        answers = await asyncio.gather(*(n.control.upstream_health(timeout) for n in nodes))
        reachable = any(
            answer.get("reachable") and node.routable
            for node, answer in zip(nodes, answers, strict=True)
        )
        return {
            "reachable": reachable,
            "nodes": {node.name: answer for node, answer in zip(nodes, answers, strict=True)},
        }

    async def _targets(self, name: str, node_names: list[str] | None) -> list[Node]:
        route = await self._table.route(name)
        if node_names is None:
            return list(route.candidates)
        targets: list[Node] = []
        for node_name in node_names:
            node = self._table.get(node_name)
            if node is None:
                raise InvalidRequest(f"no node named '{node_name}'", param="nodes")
            if node not in route.candidates:
                raise NotFound(
                    f"model '{name}' is not served by node '{node_name}'",
                    param="model",
                    code="model_not_found",
                )
            targets.append(node)
        return targets


async def _on_each(
    targets: list[Node],
    done_word: str,
    call: Callable[[Node], Awaitable[dict[str, Any] | None]],
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``call`` on every node side by side: each node's outcome for the reply, and the
    successes. Raises the first error met when no node succeeded."""
    outcomes = await asyncio.gather(*(call(node) for node in targets), return_exceptions=True)
    results: list[dict[str, Any]] = []
    successes: list[dict[str, Any]] = []
    first_error: GatewayError | None = None
    for node, outcome in zip(targets, outcomes, strict=True):
        if isinstance(outcome, GatewayError):
            first_error = first_error or outcome
            results.append({"node": node.name, "status": "failed", "error": outcome.message})
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            result = {"node": node.name, "status": done_word, **(outcome or {})}
            results.append(result)
            successes.append(result)
    if first_error is not None and not successes:
        raise first_error
    return results, successes
