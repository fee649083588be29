"""The active side of node health: a cheap probe per node, and model discovery.

Theory of operation
-------------------
One task for the whole table, started by the first routed request (nothing is asked of
any Ollama before); idle while the table has a single node, which is never ejected. Every
``routing.probe_interval`` each enabled node is asked
``/api/version`` (bounded by the health timeout), all nodes side by side: a failure counts
like a failed request (so a dead node is ejected before users find it), and a node whose
ejection is over is probed as its trial, so a restarted node comes back without waiting for
a user to take the risk. Every ``routing.discovery_interval`` an answering node is also
asked ``/api/tags`` (unless its models are configured) and ``/api/ps`` (which models are in
memory, for warm-first routing). Never a completion. Nodes being retired are forgotten
here once their last request ended.
"""

from __future__ import annotations

import asyncio
import logging

from clawproxy.errors import GatewayError
from clawproxy.nodes.node import Node
from clawproxy.nodes.table import NodeTable
from clawproxy.ollama.catalog import canonical
from clawproxy.ollama.modelctl import HEALTH_TIMEOUT_S
from clawproxy.tasks import stop_task

log = logging.getLogger("clawproxy.nodes")


class Prober:
    """Probes every node of a table on a fixed cadence (see the theory above)."""

    def __init__(
        self,
        table: NodeTable,
        loop: asyncio.AbstractEventLoop,
        *,
        interval: float,
        discovery_interval: float,
    ) -> None:
        self._table = table
        self._loop = loop
        self._interval = interval
        self._discovery_interval = discovery_interval
        self._task: asyncio.Task[None] | None = None
        self.rounds = 0

    def start(self) -> None:
        if self._task is None:
            self._task = self._loop.create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def probe_all(self, discover: bool) -> None:
        """One round: every enabled node, side by side."""
        nodes = [node for node in self._table.nodes() if node.enabled]
        await asyncio.gather(*(self._probe(node, discover) for node in nodes))
        self._table.retire_drained()
        self.rounds += 1

    async def _run(self) -> None:
        loop = self._loop
        next_discovery = loop.time()
        while True:
            # The first round one interval after the first request: that request has just
            # asked what a probe would.
            await asyncio.sleep(self._interval)
            started = loop.time()
            if sum(1 for node in self._table.nodes() if node.enabled) < 2:
                # One node: nowhere else to send a request, so nothing to decide by probing
                # (it is never ejected; see Scheduler.node_failed).
                continue
            discover = started >= next_discovery
            if discover:
                next_discovery = started + self._discovery_interval
            try:
                await self.probe_all(discover)
            except Exception:  # a bug here must not end probing for good
                log.exception("node probe round failed")

    async def _probe(self, node: Node, discover: bool) -> None:
        health = node.health
        scheduler = self._table.scheduler
        now = self._loop.time()
        if health.ejected and not health.available(now):
            return  # its trial is not due yet
        trial = health.begin(now)
        answer = await node.control.upstream_health(min(HEALTH_TIMEOUT_S, self._interval))
        if not answer.get("reachable"):
            scheduler.node_failed(node, f"probe: {answer.get('error')}")
            return
        version = answer.get("version")
        node.version = version if isinstance(version, str) else None
        if trial:
            scheduler.node_recovered(node)
        if discover:
            await self._discover(node)

    async def _discover(self, node: Node) -> None:
        try:
            if not node.catalog.static:
                await node.catalog.refresh()
            running = await node.control.running()
        except (GatewayError, TimeoutError) as exc:
            log.debug("discovery on node %s failed: %s", node.name, exc)
            return
        node.loaded = frozenset(canonical(name) for name in running)
        self._table.scheduler.dispatch()
