"""Stamps taken in the simulator process, for ``bench/phases.py``.

For every request: when its first bytes are read and when the first bytes of its reply
are written (``time.perf_counter_ns``: CLOCK_MONOTONIC on Linux, one clock for every
process, so the gateway's stamps and these line up). ``bench.simproc --stamps FILE``
installs them and writes ``[[read_ns, write_ns], ...]`` to FILE when it stops. Between
the gateway's write to Ollama and the simulator's read lies the trip there (the kernel,
and the simulator waiting for a CPU); between the simulator's write and the gateway's read
of it, the trip back.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clawproxy.simulator.connection import SimConnection


class SimStamps:
    def __init__(self) -> None:
        self.records: list[tuple[int, int]] = []
        self._reading: dict[int, int] = {}

    def install(self) -> None:
        clock = time.perf_counter_ns
        reading, records = self._reading, self.records
        data_received: Callable[..., Any] = SimConnection.data_received
        write: Callable[..., Any] = SimConnection.write

        def stamped_read(conn: SimConnection, data: bytes) -> None:
            # The first read since the last reply began: a new request's bytes.
            reading.setdefault(id(conn), clock())
            data_received(conn, data)

        def stamped_write(conn: SimConnection, data: bytes) -> None:
            read_at = reading.pop(id(conn), None)
            if read_at is not None:
                records.append((read_at, clock()))
            write(conn, data)

        # Class attributes set by name: the wrappers take the instance as any method does.
        setattr(SimConnection, "data_received", stamped_read)  # noqa: B010
        setattr(SimConnection, "write", stamped_write)  # noqa: B010

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.records))
