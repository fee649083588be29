from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvloop

sys.path.insert(0, str(Path(__file__).parent))
# The shared helpers assert too: rewrite their asserts as pytest does a test module's.
pytest.register_assert_rewrite("harness", "sse_helpers", "contrib_helpers", "browser_helpers")

from harness import Harness, Runner  # noqa: E402

LOOP_KINDS = ["uvloop", "asyncio"]
# Messages that mean a task or callback failed where nobody was looking.
SILENT_FAILURES = ("Task exception was never retrieved", "Exception in callback", "Traceback")


# A whole test coroutine may take this long before it fails as hung.
RUN_TIMEOUT = 30


@pytest.fixture(params=["asyncio", "uvloop"])
def run(request: pytest.FixtureRequest) -> Runner:
    """Run a test's coroutine on a fresh stock asyncio loop, then on a fresh uvloop."""
    factory = uvloop.new_event_loop if request.param == "uvloop" else None

    def runner(coro: Coroutine[Any, Any, None]) -> None:
        with asyncio.Runner(loop_factory=factory) as loop_runner:
            loop_runner.run(asyncio.wait_for(coro, RUN_TIMEOUT))

    return runner


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def gw(loop_kind: str, caplog: pytest.LogCaptureFixture) -> Iterator[Harness]:
    """A gateway on the simulator, on uvloop and on stock asyncio.

    After the test, the post-conditions every test must leave behind (RELIABILITY 4): no
    request active or queued, no client connection open, tasks back to the baseline, no
    error logged by the gateway or by asyncio.
    """
    caplog.set_level(logging.INFO)
    with Harness(loop_kind=loop_kind) as harness:
        baseline_tasks = harness.read(lambda: len(asyncio.all_tasks()))
        yield harness
        harness.close_clients()
        assert harness.settled(), "a request was left active or queued"
        state = harness.gateway.state
        assert harness.call(lambda: harness.wait_until(lambda: state.connections == 0))
        assert harness.call(
            lambda: harness.wait_until(lambda: len(asyncio.all_tasks()) <= baseline_tasks)
        ), "tasks left running"
    problems = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.ERROR or any(s in r.getMessage() for s in SILENT_FAILURES)
    ]
    assert not problems, problems[:3]
