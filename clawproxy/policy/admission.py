"""Admission: at most ``max_concurrent`` requests with Ollama, a bounded FIFO queue, 503 when full.

Theory of operation
-------------------
One event loop owns this object, so there are no locks. ``active`` counts slots in use.
Waiters sit in a deque in arrival order; ``release()`` hands the freed slot straight to
the oldest live waiter (``active`` does not change), so a newcomer can never overtake the
queue. Admit and release are O(1): a waiter that left (client gone, or its wait ran out)
stays in the deque as a finished future and is skipped when reached, while the live count
``waiting`` drops at once, so its place is free for the next client immediately.

The decision itself (``decide()``) is pure and unit-testable without a loop; ``acquire()``
is the thin awaitable wrapper. Waiting is a future resolved by ``release()`` and a single
``call_later`` for the deadline: no polling, no extra task.
"""

from __future__ import annotations

import asyncio
import enum
from collections import Counter, deque
from collections.abc import Callable
from typing import Protocol

from clawproxy.errors import overloaded


class Cancellable(Protocol):
    def cancel(self) -> None: ...


# ``loop.call_later``'s shape: (delay, callback, argument) -> something cancellable.
Schedule = Callable[
    [float, Callable[[asyncio.Future[None]], None], asyncio.Future[None]], Cancellable
]


class Decision(enum.Enum):
    ADMIT = "admit"
    QUEUE = "queue"
    REJECT = "reject"


def decide(active: int, waiting: int, max_concurrent: int, queue_size: int) -> Decision:
    """Admit if a slot is free and nobody is queued ahead; queue if there is room; else reject."""
    if active < max_concurrent and waiting == 0:
        return Decision.ADMIT
    if waiting < queue_size:
        return Decision.QUEUE
    return Decision.REJECT


class Admission:
    """Concurrency slots plus a FIFO wait queue; the single owner of active/waiting counts."""

    def __init__(
        self, max_concurrent: int, queue_size: int, *, schedule: Schedule | None = None
    ) -> None:
        # How a wait's deadline is set: the running loop's call_later, or a test's fake clock.
        self._schedule = schedule
        self.max_concurrent = max_concurrent
        self.queue_size = queue_size
        self.active = 0
        self.waiting = 0
        self._queue: deque[asyncio.Future[None]] = deque()
        self.rejected: Counter[str] = Counter()
        self.admitted = 0

    def __repr__(self) -> str:
        return (
            f"<Admission active={self.active}/{self.max_concurrent} "
            f"waiting={self.waiting}/{self.queue_size}>"
        )

    async def acquire(self, timeout: float) -> None:
        """Take a slot, waiting up to ``timeout`` seconds in the queue; raise 503 otherwise."""
        decision = decide(self.active, self.waiting, self.max_concurrent, self.queue_size)
        if decision is Decision.ADMIT:
            self.active += 1
            self.admitted += 1
            return
        if decision is Decision.REJECT:
            self.rejected["queue_full"] += 1
            raise overloaded(
                "the gateway is at capacity (all slots and queue places are taken); retry shortly",
                "queue_full",
            )
        await self._wait(timeout)
        self.admitted += 1

    def release(self) -> None:
        """Free a slot: hand it to the oldest live waiter, or return it to the pool."""
        queue = self._queue
        while queue:
            waiter = queue.popleft()
            if not waiter.done():
                self.waiting -= 1
                waiter.set_result(None)
                return
        self.active -= 1

    def shed(self) -> int:
        """Shutting down: every queued request gets 503 now. Returns how many."""
        shed = 0
        while self._queue:
            waiter = self._queue.popleft()
            if not waiter.done():
                self.waiting -= 1
                self.rejected["shutting_down"] += 1
                waiter.set_exception(
                    overloaded("the gateway is shutting down; retry shortly", "shutting_down")
                )
                shed += 1
        return shed

    async def _wait(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._queue.append(waiter)
        self.waiting += 1
        schedule = self._schedule or loop.call_later
        timer = schedule(timeout, self._expire, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                # The slot was handed over in the same tick the client left: give it back.
                self.release()
            elif not waiter.done() or waiter.cancelled():
                self.waiting -= 1
            raise
        finally:
            timer.cancel()

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done():
            return
        self.waiting -= 1
        self.rejected["queue_timeout"] += 1
        waiter.set_exception(
            overloaded(
                "the request waited too long for a free slot; retry shortly", "queue_timeout"
            )
        )
