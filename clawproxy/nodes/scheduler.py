"""The slots of every node and the one FIFO wait queue: the only owner of ``inflight``.

Theory of operation
-------------------
One event loop owns this object, so there are no locks. A request asks for a slot with its
``Route`` (the model and the nodes that serve it). If one of them can take it now
(``routing.choose``), the request gets a ``Lease`` on that node at once. Otherwise it waits
in the queue (at most ``queue_size`` waiting in all, else 503 ``queue_full`` at once; at most
its timeout, else 503 ``queue_timeout``), unless no candidate is in service at all (all
ejected): then 503 ``no_healthy_node`` at once, with ``Retry-After`` until the earliest trial.

Each node's cap holds exactly: ``inflight`` changes only in ``_take`` and ``release``, once
per lease, whatever the request's fate (``release`` is idempotent per lease). A released slot
goes straight to the oldest waiter that can use that node, so nobody overtakes the queue
for it; other capacity (a node added, readmitted or back from busy, a cap raised) is offered
to the waiters in order by ``dispatch()``. A waiter whose candidates are only out for a
while (busy, or ejected until a trial) is woken by one timer at the earliest such time.

With one node this is the old single admission: same decisions, same counts, same errors.

Shared slots (several gateway instances, ``coordination.backend: redis``): a ``SlotLedger``
holds the truth of who has which slot. A request then ranks the nodes that may take it here
(``routing.rank``) and asks the ledger for a slot on the first with room, in one call; the
queue is served by one pump task, woken by a local release, by another instance's release
(the ledger's channel) and by the timers, which asks the ledger for each waiter in order.
While the ledger is down, each node's ``room`` is this instance's share of its cap and the
local rules above apply as they are (or every request gets 503, ``fail_closed``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import NamedTuple, Protocol

from clawproxy.errors import Overloaded, overloaded
from clawproxy.nodes.node import Node
from clawproxy.nodes.routing import Affinity, can_take, choose, rank

log = logging.getLogger("clawproxy.nodes")


class Route(NamedTuple):
    """A request's model (canonical name) and the nodes that may serve it."""

    model: str
    candidates: tuple[Node, ...]


class LedgerDown(Exception):
    """The shared ledger could not answer (Redis down or slow): use the local rules."""


class SlotLedger(Protocol):
    """Slots shared with other gateway instances (``coordination.slots.SharedSlots``)."""

    @property
    def active(self) -> bool:
        """True while the ledger is in use (False: degraded, the local rules apply)."""

    @property
    def fail_closed(self) -> bool:
        """While not active: refuse every request (503) instead of the local rules."""

    async def take(self, ranked: list[Node]) -> tuple[Node, str] | None:
        """A slot on the first of ``ranked`` with room: the node and the lease's token, or
        None when all are full. Raises ``LedgerDown``."""

    def release(self, node: Node, token: str) -> None:
        """Give the slot back (in the background: the caller does not wait)."""


class Lease:
    """One slot on one node, from admission to ``Scheduler.release``."""

    __slots__ = ("node", "released", "settled", "token", "trial")

    def __init__(self, node: Node, trial: bool, token: str | None = None) -> None:
        self.node = node
        # The shared ledger's lease id, when the slot is shared with other instances.
        self.token = token
        # This request decides whether an ejected node comes back.
        self.trial = trial
        self.settled = False
        self.released = False

    def __repr__(self) -> str:
        return f"<Lease {self.node.name} trial={self.trial} released={self.released}>"


class _Waiter:
    __slots__ = ("candidates", "future", "model", "preferred")

    def __init__(
        self,
        future: asyncio.Future[Lease],
        model: str,
        candidates: tuple[Node, ...],
        preferred: Node | None,
    ) -> None:
        self.future = future
        self.model = model
        self.candidates = candidates
        self.preferred = preferred


def no_healthy_node(model: str, retry_after: float) -> Overloaded:
    seconds = max(1, math.ceil(retry_after)) if math.isfinite(retry_after) else 1
    return Overloaded(
        f"no node serving model '{model}' is healthy right now; retry shortly",
        code="no_healthy_node",
        headers=((b"retry-after", str(seconds).encode()),),
    )


class Scheduler:
    """Slots on every node plus one FIFO queue (see the module's theory of operation)."""

    def __init__(
        self,
        nodes: Callable[[], Iterable[Node]],
        queue_size: int,
        clock: Callable[[], float],
        *,
        rng: random.Random | None = None,
        affinity_margin: float = 0.0,
    ) -> None:
        self._nodes = nodes
        self.queue_size = queue_size
        self._clock = clock
        self._rng = rng or random.Random()
        self._margin = affinity_margin
        self.affinity = Affinity()
        self.active = 0
        self.waiting = 0
        self.admitted = 0
        self.rejected: Counter[str] = Counter()
        self._queue: deque[_Waiter] = deque()
        self._wake: asyncio.TimerHandle | None = None
        self._wake_at = math.inf
        # Told of each node's ejection ("ejected", node, reason) and return ("back", node,
        # ""), for alerts; set by whoever wants them (the gateway).
        self.on_node_event: Callable[[str, Node, str], None] | None = None
        # Slots shared with other instances (coordination); None: this process alone.
        self.ledger: SlotLedger | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self._pump_again = False

    def __repr__(self) -> str:
        return (
            f"<Scheduler active={self.active}/{self.max_concurrent} "
            f"waiting={self.waiting}/{self.queue_size}>"
        )

    @property
    def max_concurrent(self) -> int:
        """Slots of the nodes that take new requests."""
        return sum(node.cap for node in self._nodes() if node.routable)

    # -- admission ------------------------------------------------------------------------

    async def acquire(self, route: Route, timeout: float, *, session: str | None = None) -> Lease:
        """A slot on one of ``route``'s nodes, waiting up to ``timeout`` s; 503 otherwise."""
        now = self._clock()
        preferred = self._preferred(session)
        ledger = self.ledger
        if ledger is None or not ledger.active:
            if ledger is not None and ledger.fail_closed:
                raise self._coordination_down()
            if self.waiting:
                self.dispatch()
            node = choose(route.candidates, route.model, now, self._rng, preferred, self._margin)
            lease = None if node is None else self._take(node, now)
        elif self.waiting:
            lease = None  # first come, first served: the queue is ahead of this request
        else:
            try:
                lease = await self._take_shared(route, now, preferred)
            except LedgerDown:
                raise self._coordination_down() from None
        if lease is None:
            if not any(not n.health.ejected or n.health.available(now) for n in route.candidates):
                self.rejected["no_healthy_node"] += 1
                ready = min((n.health.ready_at() for n in route.candidates), default=math.inf)
                raise no_healthy_node(route.model, ready - now)
            if self.waiting >= self.queue_size:
                self.rejected["queue_full"] += 1
                raise overloaded(
                    "the gateway is at capacity (all slots and queue places are taken); "
                    "retry shortly",
                    "queue_full",
                )
            lease = await self._wait(route, timeout, preferred)
        self.admitted += 1
        if session is not None:
            self.affinity.remember(session, lease.node.name)
        return lease

    def _coordination_down(self) -> Overloaded:
        self.rejected["coordination_unavailable"] += 1
        return overloaded(
            "the gateways cannot agree on free slots right now (their Redis is unreachable); "
            "retry shortly",
            "coordination_unavailable",
        )

    def release(self, lease: Lease) -> None:
        """The request is over: its slot goes to the oldest waiter that can use the node."""
        if lease.released:
            return
        lease.released = True
        node = lease.node
        if lease.trial and not lease.settled:
            node.health.end_trial()
        node.inflight -= 1
        self.active -= 1
        ledger = self.ledger
        if lease.token is not None and ledger is not None:
            ledger.release(node, lease.token)
        if self._queue:
            if ledger is not None and ledger.active:
                self.pump()
            else:
                self._hand_over(node)

    def shed(self) -> int:
        """Shutting down: every queued request gets 503 now. Returns how many."""
        shed = 0
        while self._queue:
            waiter = self._queue.popleft().future
            if not waiter.done():
                self.waiting -= 1
                self.rejected["shutting_down"] += 1
                waiter.set_exception(
                    overloaded("the gateway is shutting down; retry shortly", "shutting_down")
                )
                shed += 1
        return shed

    # -- outcomes, reported by the routed requests and the prober --------------------------

    def succeeded(self, lease: Lease, model: str) -> None:
        """The node answered the request with its 200 head: it has the model in memory."""
        node = lease.node
        if model not in node.loaded:
            node.loaded = node.loaded | {model}
        self.answered(lease)

    def answered(self, lease: Lease) -> None:
        """The node answered (a 200, or a 400/404 that is the client's): it is alive."""
        lease.settled = True
        node = lease.node
        if node.health.succeeded():
            log.warning("node %s is back in service after its trial request", node.name)
            self._tell("back", node, "")
            self.dispatch()

    def failed(self, lease: Lease, reason: str) -> None:
        lease.settled = True
        self.node_failed(lease.node, reason)

    def busy(self, lease: Lease) -> None:
        """Ollama's own 503: its queue is full. Not a failure; no new request for a moment."""
        lease.settled = True
        node = lease.node
        node.health.busy(self._clock())
        self._arm(node.health.busy_until)

    def node_failed(self, node: Node, reason: str) -> None:
        health = node.health
        # A lone node is never ejected: there is nowhere else to go, and ejecting it would
        # only turn a recovered Ollama's first seconds into 503s.
        alone = sum(1 for other in self._nodes() if other.routable) < 2
        if health.failed(self._clock(), reason, may_eject=not alone):
            log.warning(
                "node %s ejected after %d failure(s) in a row (%s); trial in %.3gs",
                node.name,
                health.failures,
                reason,
                health.backoff,
            )
            self._tell("ejected", node, reason)
            self._arm(health.ready_at())

    def node_recovered(self, node: Node) -> None:
        """The node's trial probe was answered: back in service."""
        if node.health.succeeded():
            log.warning("node %s is back in service after its trial probe", node.name)
            self._tell("back", node, "")
            self.dispatch()

    def dispatch(self) -> None:
        """Offer every free slot to the waiters, oldest first (capacity appeared)."""
        if self.ledger is not None and self.ledger.active:
            self.pump()
            return
        now = self._clock()
        kept: deque[_Waiter] = deque()
        while self._queue:
            waiter = self._queue.popleft()
            if waiter.future.done():
                continue
            node = choose(
                waiter.candidates, waiter.model, now, self._rng, waiter.preferred, self._margin
            )
            if node is None:
                kept.append(waiter)
                continue
            self.waiting -= 1
            waiter.future.set_result(self._take(node, now))
        self._queue = kept
        if kept:
            self._arm(min(self._ready_at(w) for w in kept))

    # -- shared slots -------------------------------------------------------------------------

    def pump(self) -> None:
        """Serve the queue from the shared ledger (a slot was freed here or elsewhere)."""
        if not self._queue:
            return
        if self._pump_task is not None:
            self._pump_again = True
            return
        self._pump_task = asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        try:
            again = True
            while again and self._queue:
                self._pump_again = False
                for waiter in list(self._queue):
                    if waiter.future.done():
                        continue
                    lease = await self._take_shared(
                        Route(waiter.model, waiter.candidates), self._clock(), waiter.preferred
                    )
                    if lease is None:
                        continue
                    if waiter.future.done():  # it left while Redis answered
                        self.release(lease)
                        continue
                    self._queue.remove(waiter)
                    self.waiting -= 1
                    waiter.future.set_result(lease)
                again = self._pump_again
        except LedgerDown:
            pass  # degraded: the local rules serve the queue from here (dispatch)
        finally:
            self._pump_task = None
        if self.ledger is not None and not self.ledger.active:
            self.dispatch()
        elif self._queue:
            self._arm(min(self._ready_at(w) for w in self._queue))

    async def _take_shared(self, route: Route, now: float, preferred: Node | None) -> Lease | None:
        """A slot from the shared ledger on the best node with room there, or None."""
        ledger = self.ledger
        assert ledger is not None
        ranked = rank(route.candidates, route.model, now, self._rng, preferred, self._margin)
        if not ranked:
            return None
        try:
            got = await ledger.take(ranked)
        except LedgerDown:
            # Redis failed: this request goes by the local rules (the ledger degraded).
            if ledger.fail_closed:
                raise
            node = choose(route.candidates, route.model, now, self._rng, preferred, self._margin)
            return None if node is None else self._take(node, now)
        if got is None:
            return None
        node, token = got
        return self._take(node, self._clock(), token)

    # -- internals --------------------------------------------------------------------------

    def _tell(self, event: str, node: Node, reason: str) -> None:
        listener = self.on_node_event
        if listener is not None:
            listener(event, node, reason)

    def _preferred(self, session: str | None) -> Node | None:
        if session is None:
            return None
        name = self.affinity.get(session)
        if name is None:
            return None
        for node in self._nodes():
            if node.name == name:
                return node
        return None

    def _take(self, node: Node, now: float, token: str | None = None) -> Lease:
        node.inflight += 1
        if node.inflight > node.peak:
            node.peak = node.inflight
        node.requests += 1
        self.active += 1
        return Lease(node, node.health.begin(now), token)

    def _hand_over(self, node: Node) -> None:
        """``node`` has one free slot: the oldest live waiter that can use it gets it."""
        now = self._clock()
        if not can_take(node, now):
            return
        queue = self._queue
        for waiter in queue:
            if waiter.future.done() or node not in waiter.candidates:
                continue
            queue.remove(waiter)
            self.waiting -= 1
            waiter.future.set_result(self._take(node, now))
            break
        while queue and queue[0].future.done():
            queue.popleft()

    async def _wait(self, route: Route, timeout: float, preferred: Node | None) -> Lease:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Lease] = loop.create_future()
        waiter = _Waiter(future, route.model, route.candidates, preferred)
        self._queue.append(waiter)
        self.waiting += 1
        self._arm(self._ready_at(waiter))
        if self.ledger is not None and self.ledger.active:
            # Behind others in the queue: the pump serves them, then this one, in order.
            self.pump()
        timer = loop.call_later(timeout, self._expire, future)
        try:
            return await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled() and future.exception() is None:
                # The slot was handed over in the same tick the client left: give it back.
                self.release(future.result())
            elif not future.done() or future.cancelled():
                self.waiting -= 1
            raise
        finally:
            timer.cancel()

    def _expire(self, future: asyncio.Future[Lease]) -> None:
        if future.done():
            return
        self.waiting -= 1
        self.rejected["queue_timeout"] += 1
        future.set_exception(
            overloaded(
                "the request waited too long for a free slot; retry shortly", "queue_timeout"
            )
        )

    def _ready_at(self, waiter: _Waiter) -> float:
        """The earliest time one of the waiter's nodes that is out for a while comes back."""
        now = self._clock()
        times = (node.health.ready_at() for node in waiter.candidates)
        return min((t for t in times if t > now), default=math.inf)

    def _arm(self, at: float) -> None:
        """Run ``dispatch`` at ``at`` (loop time), unless a wake-up is due sooner."""
        if not math.isfinite(at) or not self._queue:
            return
        if self._wake is not None and self._wake_at <= at:
            return
        if self._wake is not None:
            self._wake.cancel()
        loop = asyncio.get_running_loop()
        self._wake_at = at
        self._wake = loop.call_at(at, self._woken)

    def _woken(self) -> None:
        self._wake = None
        self._wake_at = math.inf
        self.dispatch()
