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


def compiled_build() -> bool:
    """True when the suite runs on ``scripts/compile``'s build (``PYTHONPATH`` first):
    its hot modules are extension modules there."""
    import clawproxy.http.chunked as probe

    return not (probe.__file__ or "").endswith(".py")


COMPILED = compiled_build()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "pure_python(reason): a white-box test that patches what mypyc binds at compile "
        "time; skipped on the compiled build, which runs everything else",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not COMPILED:
        return
    for item in items:
        marker = item.get_closest_marker("pure_python")
        if marker is not None:
            item.add_marker(pytest.mark.skip(reason=f"compiled build: {marker.args[0]}"))


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
