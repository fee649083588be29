"""The scheduler: slots on every node and one FIFO queue, driven on a real loop without sleeps.

The single-node cases are the old admission's (same decisions, counts and errors); the rest
is what several nodes add: routing by priority, load and warmth, each node's cap exact, a
freed slot going to the oldest waiter that can use it, ejection and the trial.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawproxy.config import NodeConfig
from clawproxy.errors import Overloaded
from clawproxy.nodes.health import EjectPolicy, Health
from clawproxy.nodes.node import Node
from clawproxy.nodes.routing import choose
from clawproxy.nodes.scheduler import Lease, Route, Scheduler
from clawproxy.ollama.catalog import ModelCatalog
from clawproxy.ollama.modelctl import ModelControl
from clawproxy.ollama.pool import UpstreamPool

MODEL = "m:latest"


def make_node(
    name: str,
    cap: int,
    *,
    weight: float = 1.0,
    priority: int = 0,
    policy: EjectPolicy | None = None,
) -> Node:
    """A real node whose pools open nothing until asked (nothing is asked here)."""
    loop = asyncio.get_running_loop()
    spec = NodeConfig(name=name, url="http://127.0.0.1:9", weight=weight, priority=priority)

    def pool() -> UpstreamPool:
        return UpstreamPool("127.0.0.1", 9, connect_timeout=1, io_timeout=1, max_idle=1, loop=loop)

    control = ModelControl(pool(), keep_alive=None, clock=loop.time)
    user = pool()
    catalog = ModelCatalog(user, loop.time, [MODEL])
    return Node(spec, cap, Health(policy or EjectPolicy()), user, control, catalog)


def make_scheduler(nodes: list[Node], queue_size: int, seed: int = 0) -> Scheduler:
    loop = asyncio.get_running_loop()
    return Scheduler(lambda: nodes, queue_size, loop.time, rng=random.Random(seed))


def one_node(cap: int, queue_size: int) -> tuple[Node, Scheduler, Route]:
    """A single-node scheduler (the old admission) and the route to its node."""
    node = make_node("a", cap)
    return node, make_scheduler([node], queue_size), Route(MODEL, (node,))


async def settle() -> None:
    for _ in range(3):
        await asyncio.sleep(0)


def run(main: Callable[[], Awaitable[None]]) -> None:
    async def wrapped() -> None:
        await main()

    asyncio.run(wrapped())


# -- one node: the admission that was ---------------------------------------------------------


def test_one_node_queue_is_fifo_and_slots_are_handed_over() -> None:
    async def main() -> None:
        node, sched, route = one_node(1, 3)
        first = await sched.acquire(route, 10)
        order: list[int] = []
        leases: list[Lease] = []

        async def waiter(n: int) -> None:
            leases.append(await sched.acquire(route, 10))
            order.append(n)

        tasks = [asyncio.create_task(waiter(n)) for n in range(3)]
        await settle()
        assert (sched.active, sched.waiting) == (1, 3)
        sched.release(first)
        for expected in range(3):
            await settle()
            assert order == list(range(expected + 1))
            assert sched.active == 1 == node.inflight
            sched.release(leases[-1])
        assert (sched.active, sched.waiting) == (0, 0)
        await asyncio.gather(*tasks)

    run(main)


def test_full_queue_rejects_at_once_with_retry_after() -> None:
    async def main() -> None:
        node, sched, route = one_node(1, 1)
        held = await sched.acquire(route, 10)
        queued = asyncio.create_task(sched.acquire(route, 10))
        await settle()
        with pytest.raises(Overloaded) as info:
            await sched.acquire(route, 10)
        assert info.value.status == 503
        assert info.value.code == "queue_full"
        assert dict(info.value.headers)[b"retry-after"] == b"1"
        assert sched.rejected["queue_full"] == 1
        sched.release(held)
        sched.release(await queued)
        assert (sched.active, sched.waiting, node.inflight) == (0, 0, 0)

    run(main)


def test_release_is_idempotent_per_lease() -> None:
    async def main() -> None:
        node = make_node("a", 2)
        sched = make_scheduler([node], 0)
        lease = await sched.acquire(Route(MODEL, (node,)), 10)
        sched.release(lease)
        sched.release(lease)
        assert (sched.active, node.inflight) == (0, 0)

    run(main)


def test_waiter_that_leaves_frees_its_place_at_once() -> None:
    async def main() -> None:
        _node, sched, route = one_node(1, 1)
        held = await sched.acquire(route, 10)
        leaving = asyncio.create_task(sched.acquire(route, 10))
        await settle()
        assert sched.waiting == 1
        leaving.cancel()
        await settle()
        assert sched.waiting == 0
        nxt = asyncio.create_task(sched.acquire(route, 10))
        await settle()
        sched.release(held)
        lease = await nxt
        assert (sched.active, sched.waiting) == (1, 0)
        sched.release(lease)
        assert sched.active == 0

    run(main)


def test_queue_timeout_gives_503_and_keeps_counts_true() -> None:
    async def main() -> None:
        _node, sched, route = one_node(1, 2)
        held = await sched.acquire(route, 10)
        late = asyncio.create_task(sched.acquire(route, 0.01))
        on_time = asyncio.create_task(sched.acquire(route, 60))
        with pytest.raises(Overloaded) as info:
            await late
        assert info.value.code == "queue_timeout"
        assert (sched.active, sched.waiting) == (1, 1)
        sched.release(held)
        lease = await on_time
        assert (sched.active, sched.waiting) == (1, 0)
        sched.release(lease)
        assert sched.rejected["queue_timeout"] == 1

    run(main)


def test_slot_handed_over_in_the_tick_the_client_leaves_is_returned() -> None:
    async def main() -> None:
        node, sched, route = one_node(1, 1)
        held = await sched.acquire(route, 10)
        leaving = asyncio.create_task(sched.acquire(route, 10))
        await settle()
        sched.release(held)  # hands the slot to the waiter...
        leaving.cancel()  # ...which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await leaving
        assert (sched.active, sched.waiting, node.inflight) == (0, 0, 0)

    run(main)


def test_shed_refuses_every_waiter() -> None:
    async def main() -> None:
        _node, sched, route = one_node(1, 3)
        held = await sched.acquire(route, 10)
        waiters = [asyncio.create_task(sched.acquire(route, 10)) for _ in range(2)]
        await settle()
        assert sched.shed() == 2
        for task in waiters:
            with pytest.raises(Overloaded) as info:
                await task
            assert info.value.code == "shutting_down"
        sched.release(held)
        assert (sched.active, sched.waiting) == (0, 0)

    run(main)


# -- several nodes ----------------------------------------------------------------------------


def test_higher_priority_tier_first_lower_only_when_full() -> None:
    async def main() -> None:
        main_node = make_node("main", 2, priority=1)
        spare = make_node("spare", 4)
        sched = make_scheduler([main_node, spare], 0)
        route = Route(MODEL, (spare, main_node))
        leases = [await sched.acquire(route, 10) for _ in range(3)]
        assert [lease.node.name for lease in leases] == ["main", "main", "spare"]

    run(main)


def test_least_loaded_by_weight_and_warm_first() -> None:
    async def main() -> None:
        big = make_node("big", 4, weight=2.0)
        small = make_node("small", 4)
        sched = make_scheduler([big, small], 0)
        route = Route(MODEL, (big, small))
        names = [(await sched.acquire(route, 10)).node.name for _ in range(6)]
        # load = inflight / (cap * weight): big takes two for each of small's.
        assert names.count("big") == 4 and names.count("small") == 2
        cold = make_node("cold", 4)
        warm = make_node("warm", 4)
        warm.loaded = frozenset({MODEL})
        warm.inflight = 3  # busier, but the model is in memory there
        now = asyncio.get_running_loop().time()
        assert choose((cold, warm), MODEL, now, random.Random(1)) is warm

    run(main)


def test_ties_are_broken_at_random_not_by_list_order() -> None:
    async def main() -> None:
        a, b = make_node("a", 8), make_node("b", 8)
        now = asyncio.get_running_loop().time()
        rng = random.Random(7)
        picks = {choose((a, b), MODEL, now, rng).name for _ in range(40)}  # type: ignore[union-attr]
        assert picks == {"a", "b"}

    run(main)


def test_freed_slot_goes_to_the_oldest_waiter_that_can_use_that_node() -> None:
    async def main() -> None:
        a, b = make_node("a", 1), make_node("b", 1)
        sched = make_scheduler([a, b], 4)
        on_a = await sched.acquire(Route(MODEL, (a,)), 10)
        on_b = await sched.acquire(Route(MODEL, (b,)), 10)
        only_b = asyncio.create_task(sched.acquire(Route("x:latest", (b,)), 10))
        either = asyncio.create_task(sched.acquire(Route(MODEL, (a, b)), 10))
        await settle()
        sched.release(on_a)  # only_b is older, but cannot use a: either gets it
        got = await either
        assert got.node is a and not only_b.done()
        sched.release(on_b)
        assert (await only_b).node is b

    run(main)


def test_all_candidates_ejected_is_503_with_retry_after_then_a_trial() -> None:
    async def main() -> None:
        policy = EjectPolicy(eject_after=1, eject_base=30.0, eject_max=60.0)
        a = make_node("a", 2, policy=policy)
        # (b serves other models: a lone node is never ejected, there is nowhere else to go)
        sched = make_scheduler([a, make_node("b", 2)], 4)
        route = Route(MODEL, (a,))
        lease = await sched.acquire(route, 10)
        sched.failed(lease, "refused")
        sched.release(lease)
        assert a.state().value == "ejected"
        with pytest.raises(Overloaded) as info:
            await sched.acquire(route, 10)
        assert info.value.code == "no_healthy_node"
        assert 29 <= int(dict(info.value.headers)[b"retry-after"]) <= 30
        # The ejection is over: exactly one request is let through as the trial.
        a.health.ejected_until = asyncio.get_running_loop().time()
        trial = await sched.acquire(route, 10)
        assert trial.trial
        with pytest.raises(Overloaded):  # still out until the trial says otherwise
            await sched.acquire(route, 10)
        sched.succeeded(trial, MODEL)
        assert (await sched.acquire(route, 10)).node is a
        assert a.state().value == "up" and a.health.backoff == 30.0

    run(main)


def test_failed_trial_doubles_the_backoff_up_to_the_max() -> None:
    health = Health(EjectPolicy(eject_after=2, eject_base=5.0, eject_max=12.0))
    assert not health.failed(0.0, "x")
    assert health.failed(1.0, "x") and health.ejected_until == 6.0
    assert not health.available(5.9) and health.available(6.0)
    for start, backoff in ((6.0, 10.0), (16.0, 12.0), (28.0, 12.0)):
        assert health.begin(start)
        assert not health.available(start)  # one trial at a time
        assert health.failed(start, "x")
        assert health.backoff == backoff and health.ejected_until == start + backoff
    assert health.begin(40.0) and health.succeeded()
    assert health.backoff == 5.0 and not health.ejected


def test_a_lone_node_is_never_ejected() -> None:
    async def main() -> None:
        a = make_node("a", 1, policy=EjectPolicy(eject_after=1))
        sched = make_scheduler([a], 0)
        for _ in range(3):
            lease = await sched.acquire(Route(MODEL, (a,)), 10)
            sched.failed(lease, "refused")
            sched.release(lease)
        assert a.state().value == "up" and a.health.failures == 3

    run(main)


def test_busy_node_is_skipped_for_a_moment_not_failed() -> None:
    async def main() -> None:
        a, b = make_node("a", 4), make_node("b", 4)
        sched = make_scheduler([a, b], 0)
        route = Route(MODEL, (a, b))
        lease = await sched.acquire(route, 10)
        sched.busy(lease)
        sched.release(lease)
        busy = lease.node
        other = b if busy is a else a
        for _ in range(3):
            assert (await sched.acquire(route, 10)).node is other
        assert busy.health.failures == 0 and busy.state().value == "up"

    run(main)


@settings(max_examples=60, deadline=None)
@given(
    caps=st.lists(st.integers(1, 3), min_size=1, max_size=3),
    steps=st.lists(st.tuples(st.integers(0, 3), st.integers(0, 6)), max_size=60),
)
def test_no_node_ever_exceeds_its_cap(caps: list[int], steps: list[tuple[int, int]]) -> None:
    """Random arrivals, releases, cancellations, failures and busies: every node's inflight
    stays within its cap, and the counts add up at every step and at the end."""

    async def main() -> None:
        nodes = [make_node(f"n{i}", cap) for i, cap in enumerate(caps)]
        sched = make_scheduler(nodes, 3)
        held: list[Lease] = []
        waiting: list[asyncio.Task[Lease]] = []
        for action, pick in steps:
            if action == 0:
                cands = tuple(nodes[: 1 + pick % len(nodes)])
                waiting.append(asyncio.create_task(sched.acquire(Route(MODEL, cands), 10)))
            elif action == 1 and held:
                sched.release(held.pop(pick % len(held)))
            elif action == 2 and waiting:
                waiting.pop(pick % len(waiting)).cancel()
            elif action == 3 and held:
                lease = held.pop(pick % len(held))
                sched.busy(lease) if pick % 2 else sched.answered(lease)
                sched.release(lease)
            await settle()
            for task in [t for t in waiting if t.done()]:
                waiting.remove(task)
                if not task.cancelled() and task.exception() is None:
                    held.append(task.result())
            assert all(0 <= n.inflight <= n.cap for n in nodes)
            assert sched.active == sum(n.inflight for n in nodes) == len(held)
        for task in waiting:
            task.cancel()
        await settle()
        for task in waiting:
            if task.done() and not task.cancelled() and task.exception() is None:
                held.append(task.result())
        for lease in held:
            sched.release(lease)
        await settle()
        assert sched.active == 0 and all(n.inflight == 0 for n in nodes)
        assert sched.waiting == 0

    run(main)
