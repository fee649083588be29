"""Request bodies split anywhere: h11 parses the head, the server counts Content-Length bodies.

A property test over the server's own body reader: whatever the cut points, every request
of a pipelined sequence is dispatched once, in order, with exactly its body. The connection
is the real one, behind a real ``Listener``, with a route table whose handlers record what
they were given: no gateway, no Ollama, only the transport is fake.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import cast

import pytest
from harness import FakeTransport
from hypothesis import given, settings
from hypothesis import strategies as st

from clawproxy.config import config_from_mapping
from clawproxy.http.listener import Listener
from clawproxy.http.request import Request
from clawproxy.http.router import Router
from clawproxy.http.server import HttpConnection

PATHS = (b"/a", b"/b", b"/c")


class Recorder:
    """The listener's events and the handlers' record of what reached them."""

    def __init__(self) -> None:
        self.seen: list[tuple[bytes, bytes, bytes]] = []
        self.finished = 0
        self.refused: list[str] = []

    async def handle(self, request: Request, conn: HttpConnection) -> None:
        """Answers every request with 200 and its body length."""
        self.seen.append((request.method, request.path, request.body))
        conn.send(request, 200, b"%d" % len(request.body))

    def request_finished(self, request: Request) -> None:
        self.finished += 1

    def request_refused(self, client: str, status: int, reason: str) -> None:
        self.refused.append(reason)

    def connections_changed(self, count: int) -> None:
        pass


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def post(path: bytes, body: bytes, chunked: bool) -> bytes:
    if chunked:
        framed = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        return b"POST %b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%b" % (
            path,
            framed,
        )
    return b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (path, len(body), body)


requests = st.lists(
    st.tuples(st.sampled_from(PATHS), st.binary(max_size=200), st.booleans()),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(sequence=requests, cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_pipelined_bodies_split_anywhere_arrive_whole_and_in_order(
    loop: asyncio.AbstractEventLoop,
    sequence: list[tuple[bytes, bytes, bool]],
    cuts: list[int],
) -> None:
    wire = b"".join(post(path, body, chunked) for path, body, chunked in sequence)
    transport = FakeTransport()
    recorder = Recorder()
    listener = Listener(config_from_mapping({}).server, loop, recorder)
    router = Router({path: {b"POST": recorder.handle} for path in PATHS})
    conn = HttpConnection(listener, router)

    async def drive() -> None:
        conn.connection_made(cast(asyncio.Transport, transport))
        start = 0
        for size in [*cuts, len(wire)]:
            piece = wire[start : start + size]
            if piece:
                conn.data_received(piece)
            start += size
            # Let the handler run between some reads, as the loop would.
            await asyncio.sleep(0)
        for _ in range(len(sequence) * 3):
            await asyncio.sleep(0)
        conn.connection_lost(None)

    loop.run_until_complete(drive())
    assert recorder.seen == [(b"POST", path, body) for path, body, _ in sequence]
    assert recorder.finished == len(sequence)
    assert recorder.refused == []
    answers = bytes(transport.written).split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert [a.rpartition(b"\r\n\r\n")[2] for a in answers] == [
        b"%d" % len(body) for _, body, _ in sequence
    ]
