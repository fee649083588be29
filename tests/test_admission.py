"""Admission: the pure decision table, and the FIFO queue driven on a real loop without sleeps."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from clawproxy.errors import Overloaded
from clawproxy.policy.admission import Admission, Decision, decide


@pytest.mark.parametrize(
    ("active", "waiting", "expected"),
    [
        (0, 0, Decision.ADMIT),
        (1, 0, Decision.ADMIT),
        (2, 0, Decision.QUEUE),
        (1, 1, Decision.QUEUE),  # a free slot never lets a newcomer overtake the queue
        (2, 2, Decision.QUEUE),
        (2, 3, Decision.REJECT),
    ],
)
def test_decide(active: int, waiting: int, expected: Decision) -> None:
    assert decide(active, waiting, max_concurrent=2, queue_size=3) is expected


def test_decide_without_queue_rejects_when_full() -> None:
    assert decide(1, 0, max_concurrent=1, queue_size=0) is Decision.REJECT


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_queue_is_fifo_and_slots_are_handed_over() -> None:
    async def main() -> None:
        adm = Admission(max_concurrent=1, queue_size=3)
        await adm.acquire(10)
        order: list[int] = []

        async def waiter(n: int) -> None:
            await adm.acquire(10)
            order.append(n)

        tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
        await settle()
        assert (adm.active, adm.waiting) == (1, 3)
        for expected in range(3):
            adm.release()
            await settle()
            assert order == list(range(expected + 1))
            assert adm.active == 1
        adm.release()
        assert (adm.active, adm.waiting) == (0, 0)
        await asyncio.gather(*tasks)

    run(main())


def test_full_queue_rejects_at_once_with_retry_after() -> None:
    async def main() -> None:
        adm = Admission(max_concurrent=1, queue_size=1)
        await adm.acquire(10)
        queued = asyncio.create_task(adm.acquire(10))
        await settle()
        with pytest.raises(Overloaded) as info:
            await adm.acquire(10)
        assert info.value.status == 503
        assert dict(info.value.headers)[b"retry-after"] == b"1"
        assert adm.rejected["queue_full"] == 1
        adm.release()
        await queued
        adm.release()
        assert (adm.active, adm.waiting) == (0, 0)

    run(main())


def test_waiter_that_leaves_frees_its_place_at_once() -> None:
    async def main() -> None:
        adm = Admission(max_concurrent=1, queue_size=1)
        await adm.acquire(10)
        leaving = asyncio.create_task(adm.acquire(10))
        await settle()
        assert adm.waiting == 1
        leaving.cancel()
        await settle()
        assert adm.waiting == 0
        # Its place is free for the next client, and the dead waiter is skipped on release.
        nxt = asyncio.create_task(adm.acquire(10))
        await settle()
        adm.release()
        await nxt
        assert (adm.active, adm.waiting) == (1, 0)
        adm.release()
        assert adm.active == 0

    run(main())


class FakeClock:
    """Stands in for loop.call_later: deadlines fire when the test advances time."""

    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list[tuple[float, Any, Any, list[bool]]] = []

    def call_later(self, delay: float, callback: Any, arg: Any) -> Any:
        cancelled = [False]
        self.timers.append((self.now + delay, callback, arg, cancelled))

        class Handle:
            def cancel(self) -> None:
                cancelled[0] = True

        return Handle()

    def advance(self, seconds: float) -> None:
        self.now += seconds
        due = [t for t in self.timers if t[0] <= self.now and not t[3][0]]
        self.timers = [t for t in self.timers if t not in due]
        for _, callback, arg, _ in due:
            callback(arg)


def test_queue_timeout_gives_503_and_keeps_counts_true() -> None:
    async def main() -> None:
        clock = FakeClock()
        adm = Admission(max_concurrent=1, queue_size=2, schedule=clock.call_later)
        await adm.acquire(10)
        late = asyncio.create_task(adm.acquire(30))
        on_time = asyncio.create_task(adm.acquire(60))
        await settle()
        assert adm.waiting == 2
        clock.advance(29.9)
        await settle()
        assert not late.done()
        clock.advance(0.2)  # past the first waiter's 30 s, not the second's 60 s
        await settle()
        with pytest.raises(Overloaded) as info:
            await late
        assert info.value.code == "queue_timeout"
        assert (adm.active, adm.waiting) == (1, 1)
        assert adm.rejected["queue_timeout"] == 1
        adm.release()  # the slot goes to the waiter still in time
        await on_time
        assert (adm.active, adm.waiting) == (1, 0)
        # Its own deadline was cancelled with the hand-over: advancing fires nothing.
        clock.advance(100)
        assert adm.rejected["queue_timeout"] == 1
        adm.release()
        assert adm.active == 0

    run(main())


def test_slot_handed_over_in_the_tick_the_client_leaves_is_returned() -> None:
    async def main() -> None:
        adm = Admission(max_concurrent=1, queue_size=1)
        await adm.acquire(10)
        leaving = asyncio.create_task(adm.acquire(10))
        await settle()
        adm.release()  # hands the slot to the waiter...
        leaving.cancel()  # ...which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert (adm.active, adm.waiting) == (0, 0)

    run(main())
