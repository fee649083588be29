"""Each node's slots as leases in Redis, shared by every gateway instance.

Theory of operation
-------------------
A node's in-flight generations are a sorted set in Redis: member = lease id, score = its
expiry (Redis's ``TIME`` plus ``lease_ttl``). ``take`` asks for a slot on the ranked nodes in
one script call (``scripts.ACQUIRE``: expired leases dropped, the first node with room gets
the lease); ``release`` removes it and publishes on the pool's channel, so waiters on every
instance retry at once (no polling). Every ``lease_ttl / 3`` one pipelined script renews
every lease this instance holds and its heartbeat in the instances set (``scripts.RENEW``);
a lease found gone (Redis restarted, or this instance was frozen past its ttl) counts as
``lease_lost`` and is logged, and the request goes on. A killed or frozen instance's slots
come back by themselves after ``lease_ttl``.

Redis down or slow (the link's breaker opens): ``active`` turns False and each node's
``room`` becomes this instance's share, ``max(1, cap // live_instances)``, with the live
instances as last counted, so the instances together stay near each cap without Redis; or,
under ``on_error: fail_closed``, every request is refused. Each renew tick then probes
Redis; when it answers, every lease held here is put back first (``scripts.REREGISTER``),
then the shared mode resumes.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from clawproxy.coordination import scripts
from clawproxy.coordination.link import CoordinationError, RedisLink
from clawproxy.nodes.node import Node
from clawproxy.nodes.scheduler import LedgerDown
from clawproxy.tasks import stop_tasks

log = logging.getLogger("clawproxy.coordination")

# Renewals per lease_ttl: a lease survives two missed renewals.
RENEWALS_PER_TTL = 3
# After a failed subscription, wait this long before trying again.
RESUBSCRIBE_S = 1.0


class SharedSlots:
    """The ``SlotLedger`` of one gateway instance (see the module's theory)."""

    def __init__(
        self,
        link: RedisLink,
        *,
        prefix: str,
        instance: str,
        lease_ttl: float,
        fail_closed: bool,
        nodes: Callable[[], Iterable[Node]],
        on_released: Callable[[], None],
    ) -> None:
        self._link = link
        # One hash tag for every key of the pool: the scripts run on Redis Cluster too.
        self._tag = "{" + prefix + "}"
        self.channel = f"{self._tag}:released"
        self.instance = instance
        self._ttl_ms = int(lease_ttl * 1000)
        self.lease_ttl = lease_ttl
        self._fail_closed = fail_closed
        self._nodes = nodes
        self._on_released = on_released
        self._ids = itertools.count(1)
        # lease id -> node name, for every slot this instance holds in Redis.
        self.held: dict[str, str] = {}
        self.live_instances = 1
        self.counts: Counter[str] = Counter()
        self._tasks: set[asyncio.Task[None]] = set()
        self._degraded = False

    # -- SlotLedger -----------------------------------------------------------------------

    @property
    def active(self) -> bool:
        return not self._degraded

    @property
    def fail_closed(self) -> bool:
        return self._fail_closed

    def mode(self) -> str:
        if not self._degraded:
            return "redis"
        return "fail_closed" if self._fail_closed else "degraded"

    async def take(self, ranked: list[Node]) -> tuple[Node, str] | None:
        lease = f"{self.instance}:{next(self._ids)}"
        keys = [self.slot_key(node.name) for node in ranked]
        args: list[object] = [lease, self._ttl_ms, *(node.cap for node in ranked)]
        try:
            index, reclaimed = await self._link.run(scripts.ACQUIRE, keys, args)
        except CoordinationError as exc:
            self._check_breaker()
            raise LedgerDown(str(exc)) from None
        if reclaimed:
            self.counts["lease_reclaimed"] += int(reclaimed)
        if not index:
            return None
        node = ranked[int(index) - 1]
        self.held[lease] = node.name
        return node, lease

    def release(self, node: Node, token: str) -> None:
        if self.held.pop(token, None) is None:
            return  # lost already (renewal found it gone): nothing to give back
        if self._degraded:
            return  # Redis will drop it when the lease expires
        self._spawn(self._release(self.slot_key(node.name), token))

    # -- keys -----------------------------------------------------------------------------

    def slot_key(self, node: str) -> str:
        return f"{self._tag}:slots:{node}"

    @property
    def instances_key(self) -> str:
        return f"{self._tag}:instances"

    # -- background work --------------------------------------------------------------------

    async def renew_once(self) -> None:
        """Renew every held lease and the heartbeat; or, degraded, probe and come back."""
        if self._degraded:
            await self._probe()
            return
        leases = list(self.held.items())
        keys = [self.slot_key(node) for _, node in leases] + [self.instances_key]
        args: list[object] = [self._ttl_ms, self.instance, *(lease for lease, _ in leases)]
        try:
            reply = await self._link.run(scripts.RENEW, keys, args)
        except CoordinationError as exc:
            log.debug("lease renewal failed: %s", exc)
            self._check_breaker()
            return
        marker = reply.index(-1)
        self.live_instances = max(1, int(reply[marker + 1]))
        for index in reply[:marker]:
            lease, node = leases[int(index) - 1]
            if self.held.pop(lease, None) is not None:
                self.counts["lease_lost"] += 1
                log.warning(
                    "lease %s on node %s was gone from Redis at renewal (Redis restarted, or "
                    "this instance was stalled past coordination.lease_ttl)",
                    lease,
                    node,
                )
        # Slots of a dead instance come back by expiry, which publishes nothing: retry.
        self._on_released()

    async def renew_forever(self) -> None:
        interval = self.lease_ttl / RENEWALS_PER_TTL
        while True:
            await self.renew_once()
            await asyncio.sleep(interval)

    async def listen_forever(self) -> None:
        """Every other instance's release wakes this one's queue."""
        while True:
            pubsub = self._link.client.pubsub()
            try:
                await pubsub.subscribe(self.channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._on_released()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a dropped subscription: subscribe again shortly
                log.debug("release channel: %s", exc)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
            await asyncio.sleep(RESUBSCRIBE_S)

    async def close(self) -> None:
        await stop_tasks(self._tasks)

    # -- internals --------------------------------------------------------------------------

    async def _release(self, key: str, lease: str) -> None:
        client = self._link.client

        async def remove_and_tell() -> None:
            pipe = client.pipeline(transaction=False)
            pipe.zrem(key, lease)
            pipe.publish(self.channel, self.instance)
            await pipe.execute()

        try:
            await self._link.call(remove_and_tell)
        except CoordinationError as exc:
            # The lease expires by itself within lease_ttl; nothing else to do.
            log.debug("lease release failed: %s", exc)
            self._check_breaker()

    def _check_breaker(self) -> None:
        if self._link.breaker.open and not self._degraded:
            self._degrade()

    def _degrade(self) -> None:
        self._degraded = True
        self.counts["breaker_trips"] += 1
        live = self.live_instances
        for node in self._nodes():
            node.room = max(1, node.cap // live)
        log.error(
            "coordination degraded: %s; each node's slots here: its cap / %d instance(s)%s",
            "Redis unreachable",
            live,
            " (on_error: fail_closed: refusing requests)" if self._fail_closed else "",
        )

    async def _probe(self) -> None:
        link = self._link
        try:
            await link.call(link.client.ping)
            leases = list(self.held.items())
            if leases:
                keys = [self.slot_key(node) for _, node in leases]
                await link.run(
                    scripts.REREGISTER, keys, [self._ttl_ms, *(lease for lease, _ in leases)]
                )
        except CoordinationError:
            return
        link.breaker.close()
        self._degraded = False
        for node in self._nodes():
            node.room = node.cap
        log.warning(
            "coordination restored: Redis answers; %d lease(s) re-registered", len(self.held)
        )
        self._on_released()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def start(self) -> None:
        self._spawn(self.renew_forever())
        self._spawn(self.listen_forever())

    def start_degraded(self, why: str) -> None:
        """Redis did not answer at start: run degraded until it does."""
        self._degraded = True
        for node in self._nodes():
            node.room = max(1, node.cap // max(1, self.live_instances))
        log.error("coordination degraded from the start: %s", why)
