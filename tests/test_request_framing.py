"""Request bodies split anywhere: h11 parses the head, the server counts Content-Length bodies.

A property test over the server's own body reader: whatever the cut points, every request
of a pipelined sequence is dispatched once, in order, with exactly its body.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import cast

import pytest
from harness import offline_gateway
from hypothesis import given, settings
from hypothesis import strategies as st
from test_hostile import FakeTransport

from clawproxy.gateway import Gateway
from clawproxy.http.server import HttpConnection, Request


class RecordingConnection(HttpConnection):
    """Answers every request with 200 and its body length; keeps what it was given."""

    seen: list[tuple[bytes, bytes, bytes]]

    async def _run(self, request: Request) -> None:
        self.seen.append((request.method, request.path, request.body))
        self.send(request, 200, b"%d" % len(request.body))
        self._response_finished()


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[asyncio.AbstractEventLoop, Gateway]]:
    with offline_gateway() as made:
        yield made


def post(path: bytes, body: bytes, chunked: bool) -> bytes:
    if chunked:
        framed = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        return b"POST %b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n%b" % (
            path,
            framed,
        )
    return b"POST %b HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%b" % (path, len(body), body)


requests = st.lists(
    st.tuples(st.sampled_from([b"/a", b"/b", b"/c"]), st.binary(max_size=200), st.booleans()),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(sequence=requests, cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=30))
def test_pipelined_bodies_split_anywhere_arrive_whole_and_in_order(
    gateway: tuple[asyncio.AbstractEventLoop, Gateway],
    sequence: list[tuple[bytes, bytes, bool]],
    cuts: list[int],
) -> None:
    loop, gw = gateway
    wire = b"".join(post(path, body, chunked) for path, body, chunked in sequence)
    transport = FakeTransport()
    conn = RecordingConnection(gw, gw.public)
    conn.seen = []

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
    assert conn.seen == [(b"POST", path, body) for path, body, _ in sequence]
    answers = bytes(transport.written).split(b"HTTP/1.1 200 OK\r\n")[1:]
    assert [a.rpartition(b"\r\n\r\n")[2] for a in answers] == [
        b"%d" % len(body) for _, body, _ in sequence
    ]
