"""The nodes by name: built from the config, routed per request, changed live.

Theory of operation
-------------------
``NodeTable`` is the single owner of the set of nodes. Without a ``nodes:`` list the
configuration's ``model.endpoint`` is one node named ``default`` with
``gateway.max_concurrent`` slots, and everything behaves as a single-Ollama gateway.

``route(name)`` is the per-request question "which nodes may serve this model": the
global allow-list (``model.allowed``) first, then each routable node's catalog (its
configured ``models``, else its cached ``/api/tags``). Nodes that are ejected are not asked
(their last answer stands), so a dead node never delays a request. No node serves the
model: 404 ``model_not_found``; nodes that could not be asked and none that serves it: the
error met (502/504, as with one Ollama).

Live changes (``add``, ``drain``, ``remove``, ``apply`` on SIGHUP) are checked whole before
anything changes; a bad one raises ``NodeChangeError`` and the running table is untouched.
Every change that adds capacity offers it to the queue (``Scheduler.dispatch``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from clawproxy.config import Config, NodeConfig
from clawproxy.errors import UPSTREAM_ERRORS, GatewayError, NotFound
from clawproxy.net import parse_node_url
from clawproxy.nodes.health import EjectPolicy, Health
from clawproxy.nodes.node import Node, NodeState
from clawproxy.nodes.scheduler import Route, Scheduler
from clawproxy.ollama.catalog import ModelCatalog, canonical
from clawproxy.ollama.modelctl import ADMIN_POOL_IDLE, ModelControl
from clawproxy.ollama.pool import UpstreamPool
from clawproxy.ollama.tls import client_context

log = logging.getLogger("clawproxy.nodes")

DEFAULT_NODE = "default"


class NodeChangeError(ValueError):
    """A live change that was refused whole; the message names what is wrong."""


def node_specs(config: Config) -> tuple[NodeConfig, ...]:
    """The configured nodes, or ``model.endpoint`` as the one node ``default``."""
    if config.nodes:
        return config.nodes
    return (NodeConfig(name=DEFAULT_NODE, url=config.model.endpoint),)


def model_not_found(name: str) -> NotFound:
    return NotFound(
        f"model '{name}' not found on this gateway", param="model", code="model_not_found"
    )


class NodeTable:
    """Every node of one gateway, and the routing question asked per request."""

    def __init__(self, config: Config, loop: asyncio.AbstractEventLoop) -> None:
        self._config = config
        self._loop = loop
        routing = config.routing
        self._policy = EjectPolicy(
            routing.eject_after, routing.eject_base, routing.eject_max, routing.busy_backoff
        )
        self._allowed = frozenset(canonical(n) for n in config.model.allowed)
        self._nodes: dict[str, Node] = {}
        # The nodes new requests may go to, rebuilt on every change (read per request).
        self._routable: tuple[Node, ...] = ()
        # Nodes removed from the config (SIGHUP) that still finish streams.
        self._retiring: set[str] = set()
        self.scheduler = Scheduler(
            self.nodes,
            config.gateway.queue_size,
            loop.time,
            affinity_margin=routing.affinity_margin,
        )
        # "off", "session" (X-Session-Id) or "prefix" (that, else the conversation's start).
        self.affinity = routing.affinity
        for spec in node_specs(config):
            self._nodes[spec.name] = self._build(spec)
        self._changed()
        # The prober starts with the first routed request (nothing is asked before), once
        # there are two nodes or more.
        self.on_first_use: Callable[[], None] | None = None

    def __repr__(self) -> str:
        return f"<NodeTable {list(self._nodes.values())!r}>"

    def nodes(self) -> Iterable[Node]:
        return self._nodes.values()

    def get(self, name: str) -> Node | None:
        return self._nodes.get(name)

    @property
    def first(self) -> Node:
        """The first node (the only one without ``nodes:``)."""
        return next(iter(self._nodes.values()))

    @property
    def routable(self) -> tuple[Node, ...]:
        return self._routable

    def start_probing(self) -> None:
        """Run ``on_first_use`` once there is a request and more than one node (the first
        routed request, or a node added live): a lone node is never probed."""
        if len(self._nodes) < 2:
            return
        hook, self.on_first_use = self.on_first_use, None
        if hook is not None:
            hook()

    # -- per request --------------------------------------------------------------------------

    async def route(self, name: str) -> Route:
        """The canonical model name and the nodes that serve it (see the theory above)."""
        if self.on_first_use is not None:
            self.start_probing()
        wanted = canonical(name)
        if self._allowed and wanted not in self._allowed:
            raise model_not_found(name)
        nodes = self._routable
        if len(nodes) == 1:
            node = nodes[0]
            try:
                await node.catalog.check(name)
            except UPSTREAM_ERRORS as exc:
                self.scheduler.node_failed(node, exc.message)
                raise
            return Route(wanted, nodes)
        serving: list[Node] = []
        met: GatewayError | None = None
        now = self._loop.time()
        for node in nodes:
            health = node.health
            if health.ejected and not health.available(now):
                if node.catalog.lists(wanted):
                    serving.append(node)
                continue
            try:
                await node.catalog.check(name)
            except NotFound:
                continue
            except UPSTREAM_ERRORS as exc:
                self.scheduler.node_failed(node, exc.message)
                met = met or exc
                continue
            serving.append(node)
        if serving:
            return Route(wanted, tuple(serving))
        if met is not None:
            raise met
        raise model_not_found(name)

    async def installed(self) -> list[dict[str, Any]]:
        """Ollama's model entries of every routable node, each name once (``/v1/models``)."""
        seen: dict[str, dict[str, Any]] = {}
        met: GatewayError | None = None
        answered = False
        for node in self._routable:
            try:
                entries = await node.catalog.installed()
            except UPSTREAM_ERRORS as exc:
                met = met or exc
                continue
            answered = True
            for entry in entries:
                seen.setdefault(canonical(str(entry["name"])), entry)
        if not answered and met is not None:
            raise met
        return list(seen.values())

    # -- live changes ---------------------------------------------------------------------------

    def add(self, spec: NodeConfig) -> Node:
        if spec.name in self._nodes:
            raise NodeChangeError(f"a node named '{spec.name}' already exists")
        node = self._nodes[spec.name] = self._build(spec)
        self._changed()
        log.warning("node %s added (%s, %d slot(s))", node.name, node.url, node.cap)
        self.scheduler.dispatch()
        return node

    def drain(self, name: str) -> Node:
        node = self._require(name)
        if not node.draining:
            node.draining = True
            self._changed()
            log.warning("node %s draining: %d request(s) still running", name, node.inflight)
        return node

    def remove(self, name: str) -> None:
        node = self._require(name)
        if node.routable:
            raise NodeChangeError(f"node '{name}' must be drained (or disabled) before removal")
        if node.inflight:
            raise NodeChangeError(f"node '{name}' still has {node.inflight} request(s) running")
        self._forget(node)

    def apply(self, specs: Sequence[NodeConfig]) -> list[str]:
        """Make the table match a reread ``nodes:`` list; returns what changed, in words."""
        wanted = {spec.name: spec for spec in specs}
        for spec in specs:
            current = self._nodes.get(spec.name)
            if current is not None and (current.url, current.spec.tls) != (spec.url, spec.tls):
                raise NodeChangeError(
                    f"node '{spec.name}': its url or tls changed; add it under a new name "
                    "and remove the old one"
                )
        changes: list[str] = []
        for spec in specs:
            current = self._nodes.get(spec.name)
            if current is None:
                self._nodes[spec.name] = self._build(spec)
                changes.append(f"added {spec.name}")
            elif current.spec != spec or current.draining:
                self._update(current, spec)
                changes.append(f"updated {spec.name}")
        for name, node in list(self._nodes.items()):
            if name not in wanted and not node.draining:
                node.draining = True
                self._retiring.add(name)
                changes.append(f"draining {name}")
        self._changed()
        self.scheduler.dispatch()
        self.retire_drained()
        return changes

    def retire_drained(self) -> None:
        """Forget nodes removed from the config once their last request ended."""
        for name in list(self._retiring):
            node = self._nodes.get(name)
            if node is None or node.inflight == 0:
                self._retiring.discard(name)
                if node is not None:
                    self._forget(node)

    def models_down(self, node: Node) -> list[str]:
        """The models ``node`` serves that no other node in service serves (after its
        ejection: the models now without a healthy node)."""
        others = [
            other for other in self._routable if other is not node and not other.health.ejected
        ]
        return sorted(
            model
            for model in node.catalog.known_names()
            if not any(other.catalog.lists(model) for other in others)
        )

    def describe(self, *, with_url: bool = True) -> list[dict[str, Any]]:
        """Each node for ``GET /nodes`` and ``/stats``; the UI's copy leaves the URLs out
        (the topology is the operator's business)."""
        now = self._loop.time()
        rows = [describe_node(node, now) for node in self._nodes.values()]
        if not with_url:
            for row in rows:
                del row["url"]
        return rows

    def close(self) -> None:
        for node in self._nodes.values():
            node.close()

    # -- internals ----------------------------------------------------------------------------

    def _require(self, name: str) -> Node:
        node = self._nodes.get(name)
        if node is None:
            raise KeyError(name)
        return node

    def _forget(self, node: Node) -> None:
        del self._nodes[node.name]
        node.close()
        self._changed()
        log.warning("node %s removed", node.name)

    def _changed(self) -> None:
        self._routable = tuple(node for node in self._nodes.values() if node.routable)

    def _update(self, node: Node, spec: NodeConfig) -> None:
        # A changed models list is a new catalog (static, or back to /api/tags).
        if spec.models != node.spec.models:
            node.catalog = self._catalog(spec, node.pool)
        node.spec = spec
        node.cap = node.room = self._cap(spec)
        node.weight = spec.weight
        node.priority = spec.priority
        node.enabled = spec.enabled
        node.draining = False
        self._retiring.discard(spec.name)

    def _cap(self, spec: NodeConfig) -> int:
        cap = spec.max_concurrent
        return self._config.gateway.max_concurrent if cap is None else cap

    def _catalog(self, spec: NodeConfig, pool: UpstreamPool) -> ModelCatalog:
        allowed = spec.models if spec.models is not None else self._config.model.allowed
        return ModelCatalog(pool, self._loop.time, allowed)

    def _build(self, spec: NodeConfig) -> Node:
        config, loop = self._config, self._loop
        up = config.upstream
        tls = spec.tls
        scheme, _, _ = parse_node_url(spec.url)
        context = None
        if scheme == "https":
            try:
                context = client_context(
                    ca_file=tls.ca_file,
                    cert_file=tls.cert_file,
                    key_file=tls.key_file,
                    verify=tls.verify,
                )
            except ValueError as exc:
                raise NodeChangeError(f"node '{spec.name}': {exc}") from None

        def pool(io_timeout: float, max_idle: int) -> UpstreamPool:
            return UpstreamPool.for_endpoint(
                spec.url,
                connect_timeout=up.connect_timeout,
                io_timeout=io_timeout,
                max_idle=max_idle,
                loop=loop,
                ssl_context=context,
            )

        user = pool(config.server.timeout, up.pool_size)
        control = ModelControl(
            pool(config.gateway.model_load_timeout, ADMIN_POOL_IDLE),
            keep_alive=config.gateway.model_keep_alive,
            clock=loop.time,
        )
        return Node(
            spec, self._cap(spec), Health(self._policy), user, control, self._catalog(spec, user)
        )


def describe_node(node: Node, now: float) -> dict[str, Any]:
    health = node.health
    state = node.state()
    trial_in = None
    if state is NodeState.EJECTED and health.ejected_until is not None:
        trial_in = round(max(0.0, health.ejected_until - now), 3)
    return {
        "name": node.name,
        "url": node.url,
        "state": state.value,
        "inflight": node.inflight,
        "max_concurrent": node.cap,
        "peak_inflight": node.peak,
        "weight": node.weight,
        "priority": node.priority,
        "models": sorted(node.spec.models) if node.spec.models is not None else None,
        "loaded_models": sorted(node.loaded),
        "failures": health.failures,
        "ejections": health.ejections,
        "trial_in_seconds": trial_in,
        "busy": now < health.busy_until,
        "last_error": health.last_error or None,
        "requests": node.requests,
        "failovers": dict(node.failovers),
        "version": node.version,
    }
