from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from harness import Harness

LOOP_KINDS = ["uvloop", "asyncio"]


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def gw(loop_kind: str) -> Iterator[Harness]:
    """A gateway on the simulator with default settings, on uvloop and on stock asyncio."""
    with Harness(loop_kind=loop_kind) as harness:
        yield harness
        assert harness.settled(), "a request was left active or queued"
