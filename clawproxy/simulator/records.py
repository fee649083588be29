"""What the simulator saw and did, for tests to assert on ("upstream never saw it").

Theory of operation: ``Recorder`` is the single owner of the counters and logs: every
request (headers, raw and parsed body, arrival time), every generation as a
``StreamRecord`` (start, end, outcome, bytes), and the connection count. Times are
``loop.time()`` so a test can subtract its own ``loop.time()`` readings. Logs are bounded
deques, so a long benchmark run does not grow without limit.

Waiting: ``StreamRecord.wait_ended`` for one stream, ``Recorder.wait_for`` for any
condition over the counters. Waiters are re-checked when something is recorded (and polled
for per-write counters); with no waiters the bookkeeping costs one list check.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .script import Fault

__all__ = ["OUTCOMES", "RecordedRequest", "Recorder", "StreamRecord"]

#: ``complete``: the whole reply went out normally; ``client_closed``: the peer left first;
#: ``fault``: the simulator broke the response on purpose and ended it; ``shutdown``: the
#: simulator was closed under it.
OUTCOMES = ("complete", "client_closed", "fault", "shutdown")
DEFAULT_MAX_RECORDS = 10_000
# Counters that change per write do not notify waiters; those are polled this often.
WAIT_POLL_SECONDS = 0.01


@dataclass(slots=True)
class RecordedRequest:
    """One request as received. ``json`` is the parsed body, or ``None`` if it was not JSON."""

    index: int
    connection_id: int
    method: str
    path: str
    headers: list[tuple[str, str]]
    body: bytes
    json: Any
    received_at: float

    def header(self, name: str) -> str | None:
        """The first value of a header (case-insensitive), or ``None``."""
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


@dataclass(eq=False, slots=True)
class StreamRecord:
    """One generation (streamed or not), from the reply decision to its end."""

    request: RecordedRequest
    model: str
    streaming: bool
    fault: Fault | None
    started_at: float
    first_token_at: float | None = None
    ended_at: float | None = None
    outcome: str | None = None
    tokens_sent: int = 0
    #: Bytes and ``transport.write`` calls made for this stream, head included.
    bytes_written: int = 0
    writes: int = 0
    #: Times the generator waited because the transport said ``pause_writing``.
    write_pauses: int = 0
    ended: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def active(self) -> bool:
        return self.outcome is None

    async def wait_ended(self, timeout: float | None = None) -> str:
        """Wait for the end and return the outcome; ``TimeoutError`` after ``timeout``."""
        async with asyncio.timeout(timeout):
            await self.ended.wait()
        assert self.outcome is not None
        return self.outcome


class Recorder:
    """Counters and logs shared by all connections of one simulator."""

    def __init__(self, max_records: int = DEFAULT_MAX_RECORDS) -> None:
        self.requests: deque[RecordedRequest] = deque(maxlen=max_records)
        self.streams: deque[StreamRecord] = deque(maxlen=max_records)
        self.active_streams = 0
        self.max_active_streams = 0
        self.open_connections = 0
        self.connections_total = 0
        self._request_count = 0
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def reset_records(self) -> None:
        """Forget logged requests and streams; the high-water mark restarts from now."""
        self.requests.clear()
        self.streams.clear()
        self.max_active_streams = self.active_streams

    async def wait_for(self, predicate: Callable[[], bool], timeout: float | None = None) -> None:
        """Wait until ``predicate()`` holds; ``TimeoutError`` after ``timeout`` seconds.

        Re-checked at once after every recorded change (requests, streams, connections) and
        every ``WAIT_POLL_SECONDS`` otherwise, for conditions on byte or write counters.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(timeout):
            while not predicate():
                future: asyncio.Future[None] = loop.create_future()
                entry = (predicate, future)
                self._waiters.append(entry)
                try:
                    await asyncio.wait((future,), timeout=WAIT_POLL_SECONDS)
                finally:
                    if entry in self._waiters:
                        self._waiters.remove(entry)

    def _changed(self) -> None:
        if not self._waiters:
            return
        for entry in list(self._waiters):
            predicate, future = entry
            if not future.done() and predicate():
                future.set_result(None)
                self._waiters.remove(entry)

    def _log_request(
        self,
        connection_id: int,
        method: str,
        path: str,
        headers: list[tuple[str, str]],
        body: bytes,
        parsed: Any,
    ) -> RecordedRequest:
        record = RecordedRequest(
            index=self._request_count,
            connection_id=connection_id,
            method=method,
            path=path,
            headers=headers,
            body=body,
            json=parsed,
            received_at=asyncio.get_running_loop().time(),
        )
        self._request_count += 1
        self.requests.append(record)
        self._changed()
        return record

    def _begin_stream(
        self, request: RecordedRequest, model: str, streaming: bool, fault: Fault | None
    ) -> StreamRecord:
        record = StreamRecord(
            request=request,
            model=model,
            streaming=streaming,
            fault=fault,
            started_at=asyncio.get_running_loop().time(),
        )
        self.streams.append(record)
        self.active_streams += 1
        self.max_active_streams = max(self.max_active_streams, self.active_streams)
        self._changed()
        return record

    def _finish_stream(self, record: StreamRecord, outcome: str) -> None:
        if record.outcome is not None:
            return
        record.outcome = outcome
        record.ended_at = asyncio.get_running_loop().time()
        self.active_streams -= 1
        record.ended.set()
        self._changed()

    def _count_connection(self, delta: int) -> None:
        self.open_connections += delta
        if delta > 0:
            self.connections_total += delta
        self._changed()
