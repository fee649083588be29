"""The upstream connection and pool, fed scripted bytes: no sockets, no simulator.

The boundary is faked, never the unit: ``FakeTransport`` stands for the socket (it records
writes and pause/resume/abort/close, and reports ``connection_lost`` a loop pass after a
close, as real transports do); ``ScriptedLoop`` is a real event loop (uvloop or asyncio)
whose ``create_connection`` hands out such transports, each answering requests from its
``Peer`` script. ``Recorder`` is an ``ExchangeListener`` that writes down every call, so a
test asserts what a listener saw: one head, the body's bytes (raw or decoded), exactly one
end or error. Responses look like Ollama's: a chunked NDJSON body, one chunk per token.
"""

from __future__ import annotations

import ast
import asyncio
import itertools
import logging
import re
from collections import deque
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import h11
import orjson
import pytest
import uvloop
from hypothesis import given, settings
from hypothesis import strategies as st

from clawproxy.errors import GatewayError, UpstreamFailed, UpstreamTimeout, UpstreamUnavailable
from clawproxy.ollama.connection import (
    BodyReader,
    ConnState,
    UpstreamConnection,
    render_request,
)
from clawproxy.ollama.pool import UpstreamPool

T = TypeVar("T")

HEAD_200 = (
    b"HTTP/1.1 200 OK\r\n"
    b"Content-Type: application/x-ndjson\r\n"
    b"Date: Mon, 01 Jan 2024 00:00:00 GMT\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)
LAST_CHUNK = b"0\r\n\r\n"
HOST = b"ollama:11434"


def token_line(text: str, done: bool = False) -> bytes:
    line = {"model": "m", "message": {"role": "assistant", "content": text}, "done": done}
    return orjson.dumps(line) + b"\n"


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def chunked_body(lines: Sequence[bytes]) -> tuple[bytes, set[int]]:
    """Ollama's body for ``lines``, and the offsets where its chunks (the last one too) start."""
    starts, pos, parts = set(), 0, []
    for part in [*map(chunk, lines), LAST_CHUNK]:
        starts.add(pos)
        parts.append(part)
        pos += len(part)
    return b"".join(parts), starts


def plain_reply(status: int, body: bytes, extra: bytes = b"") -> bytes:
    """A reply framed by Content-Length (error replies, /api/tags, foreign servers)."""
    head = b"HTTP/1.1 %d X\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    return head % (status, len(body)) + body + extra


TOKENS = [token_line(t) for t in ("The", " sky", " is", " blue")] + [token_line("", True)]
STREAM_BODY, _ = chunked_body(TOKENS)
STREAM_REPLY = HEAD_200 + STREAM_BODY
TAGS = b'{"models":[{"name":"qwen3:32b"}]}'
TAGS_REPLY = plain_reply(200, TAGS)


def whole_chunk(data: bytes) -> bytes | None:
    """The payload when ``data`` is exactly one non-empty chunk (the reads the one-token
    path takes, as ``SseReframer.feed_chunk`` does), else None."""
    end = data.find(b"\r\n")
    if end <= 0:
        return None
    try:
        size = int(data[:end], 16)
    except ValueError:
        return None
    if not size or len(data) != end + 4 + size or not data.endswith(b"\r\n"):
        return None
    return data[end + 2 : -2]


def cut(data: bytes, points: Sequence[int]) -> list[bytes]:
    """``data`` split at ``points`` (taken modulo its length), empty pieces dropped."""
    edges = sorted({0, len(data), *(p % (len(data) + 1) for p in points)})
    return [data[a:b] for a, b in itertools.pairwise(edges)]


# --- fakes for the boundary -------------------------------------------------------------


class FakeTransport:
    """The socket's side of asyncio: records what the connection does to it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: Any, peer: Peer | None = None):
        self.loop = loop
        self.protocol = protocol
        self.peer = peer
        self.writes: list[bytes] = []
        self.calls: list[str] = []
        self._closing = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        if self.peer is not None:
            self.peer.answer(self, data)

    def pause_reading(self) -> None:
        self.calls.append("pause_reading")

    def resume_reading(self) -> None:
        self.calls.append("resume_reading")

    def abort(self) -> None:
        self.calls.append("abort")
        self.lose()

    def close(self) -> None:
        self.calls.append("close")
        self.lose()

    def is_closing(self) -> bool:
        return self._closing

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"peername": ("127.0.0.1", 11434)}.get(name, default)

    def lose(self, exc: Exception | None = None) -> None:
        """Closed by either side: ``connection_lost`` comes a loop pass later, once."""
        if not self._closing:
            self._closing = True
            self.loop.call_soon(self.protocol.connection_lost, exc)


CLOSE = "close"  # a Peer action: Ollama closes the connection


class Peer:
    """Ollama's side of one connection: each request written gets the next answer, a
    sequence of actions (bytes to send, or CLOSE), each a loop pass after the last."""

    def __init__(self, *answers: Sequence[bytes | str]) -> None:
        self.answers = deque(answers)
        self.requests: list[bytes] = []

    def answer(self, transport: FakeTransport, request: bytes) -> None:
        self.requests.append(request)
        for action in self.answers.popleft():
            if action == CLOSE:
                transport.loop.call_soon(transport.lose)
            else:
                transport.loop.call_soon(self._send, transport, action)

    @staticmethod
    def _send(transport: FakeTransport, data: bytes) -> None:
        if not transport.is_closing():
            transport.protocol.data_received(data)


class ScriptedLoop:
    """What both loop kinds get: ``create_connection`` dials the next ``Peer``."""

    peers: deque[Peer]
    dialed: list[tuple[str, int]]
    hang: bool

    def setup(self) -> None:
        self.peers = deque()
        self.dialed = []
        self.hang = False

    async def create_connection(
        self, protocol_factory: Callable[[], Any], host: str, port: int, **kwargs: Any
    ) -> tuple[FakeTransport, Any]:
        self.dialed.append((host, port))
        if self.hang:
            await asyncio.get_running_loop().create_future()  # until the connect timeout
        if not self.peers:
            raise ConnectionRefusedError(111, "Connection refused")
        protocol = protocol_factory()
        transport = FakeTransport(asyncio.get_running_loop(), protocol, self.peers.popleft())
        protocol.connection_made(transport)
        return transport, protocol


class ScriptedUvloop(ScriptedLoop, uvloop.Loop):  # type: ignore[misc]
    pass


class ScriptedAsyncio(ScriptedLoop, asyncio.SelectorEventLoop):  # type: ignore[misc]
    pass


class FakeOwner:
    """A connection's owner as the connection sees it (``ConnectionOwner``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, io_timeout: float = 60.0) -> None:
        self.loop = loop
        self.io_timeout = io_timeout
        self.idle: list[UpstreamConnection] = []
        self.forgotten: list[UpstreamConnection] = []

    def forget(self, conn: UpstreamConnection) -> None:
        self.forgotten.append(conn)

    def put_idle(self, conn: UpstreamConnection) -> None:
        self.idle.append(conn)

    def stand_in(self, method: bytes, target: bytes) -> h11.Request:
        headers = [(b"Host", HOST), (b"Content-Length", b"0")]
        return h11.Request(method=method, target=target, headers=headers)


class Recorder:
    """An ExchangeListener that writes every call down. With ``raw``, it takes the raw
    reads that are exactly one chunk, noting at which body offset each offer came (the
    test keeps ``at`` up to date); ``fail_in`` makes that call raise ``fail_with``."""

    def __init__(
        self,
        *,
        raw: bool = False,
        fail_in: str = "",
        fail_with: Exception | None = None,
    ) -> None:
        self.events: list[tuple[str, Any]] = []
        self.offers_at: list[int] = []
        self.at = 0
        self.fail_in = fail_in
        self.fail_with = fail_with or UpstreamFailed("the listener gave up")
        self.on_raw = self._take_raw if raw else None

    def _maybe_fail(self, where: str) -> None:
        if self.fail_in == where:
            raise self.fail_with

    def on_head(self, conn: UpstreamConnection) -> None:
        self.events.append(("head", conn.status))
        self._maybe_fail("head")

    def _take_raw(self, data: bytes) -> bool:
        self.offers_at.append(self.at)
        self._maybe_fail("raw")
        payload = whole_chunk(data)
        if payload is None:
            return False
        self.events.append(("raw", payload))
        return True

    def on_data(self, data: bytes) -> None:
        assert data, "on_data with no bytes"
        self.events.append(("data", bytes(data)))
        self._maybe_fail("data")

    def on_end(self) -> None:
        self.events.append(("end", None))

    def on_error(self, exc: GatewayError) -> None:
        self.events.append(("error", exc))

    @property
    def body(self) -> bytes:
        return b"".join(p for kind, p in self.events if kind in ("raw", "data"))

    @property
    def ends(self) -> list[tuple[str, Any]]:
        return [e for e in self.events if e[0] in ("end", "error")]

    def error(self) -> GatewayError:
        (end,) = self.ends
        assert end[0] == "error", self.events
        exc: GatewayError = end[1]
        return exc


# --- fixtures and helpers -------------------------------------------------------------


def scripted_loop(kind: str) -> Any:
    loop = ScriptedUvloop() if kind == "uvloop" else ScriptedAsyncio()
    loop.setup()
    return loop


@pytest.fixture
def loop(loop_kind: str) -> Iterator[Any]:
    """A real loop of each kind, with a faked network; left with nothing running."""
    loop = scripted_loop(loop_kind)
    try:
        yield loop
        # connection_lost callbacks still queued, then nothing may be left.
        loop.run_until_complete(asyncio.sleep(0))
        assert not asyncio.all_tasks(loop)
    finally:
        loop.close()


def run(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T], timeout: float = 5) -> T:
    async def bounded() -> T:
        async with asyncio.timeout(timeout):
            return await coro

    return loop.run_until_complete(bounded())


def settle(loop: asyncio.AbstractEventLoop) -> None:
    """Let callbacks already queued (connection_lost, a peer's answer) run."""
    loop.run_until_complete(asyncio.sleep(0))


def connect(
    loop: asyncio.AbstractEventLoop, io_timeout: float = 60.0
) -> tuple[UpstreamConnection, FakeTransport, FakeOwner]:
    owner = FakeOwner(loop, io_timeout)
    conn = UpstreamConnection(owner)
    transport = FakeTransport(loop, conn)
    conn.connection_made(transport)
    return conn, transport, owner


def begin(
    conn: UpstreamConnection,
    listener: Any = None,
    method: bytes = b"POST",
    target: bytes = b"/api/chat",
    body: bytes | None = b"{}",
) -> asyncio.Future[None]:
    return conn.begin(method, target, HOST, body, listener)


def feed(conn: UpstreamConnection, *pieces: bytes) -> None:
    for piece in pieces:
        conn.data_received(piece)


def new_pool(loop: asyncio.AbstractEventLoop, **options: Any) -> UpstreamPool:
    settings = {"connect_timeout": 1.0, "io_timeout": 5.0, "max_idle": 4, **options}
    return UpstreamPool("ollama", 11434, loop=loop, **settings)


async def fetch(pool: UpstreamPool, **kwargs: Any) -> tuple[UpstreamConnection, bytes]:
    """One /api/tags exchange, the connection left for the caller to release."""
    conn = await pool.send(b"GET", b"/api/tags", None, **kwargs)
    return conn, await conn.read_body(1 << 20)


# --- the connection: requests and heads -------------------------------------------------


def test_the_request_is_written_at_once_and_is_valid_http(loop: Any) -> None:
    conn, transport, _ = connect(loop)
    head = begin(conn, body=b'{"a":1}')
    assert not head.done()
    (wire,) = transport.writes
    assert wire == render_request(b"POST", b"/api/chat", HOST, b'{"a":1}')
    server = h11.Connection(h11.SERVER)
    server.receive_data(wire)
    request = server.next_event()
    assert isinstance(request, h11.Request)
    assert (request.method, request.target) == (b"POST", b"/api/chat")
    assert dict(request.headers) == {
        b"host": HOST,
        b"user-agent": b"clawproxy",
        b"accept": b"*/*",
        b"content-type": b"application/json",
        b"content-length": b"7",
    }
    assert server.next_event() == h11.Data(data=b'{"a":1}')
    assert type(server.next_event()) is h11.EndOfMessage
    # No body: no body headers.
    assert b"Content-Length" not in render_request(b"GET", b"/api/tags", HOST, None)
    conn.abort()


def test_a_head_split_at_every_byte_then_one_chunk_per_token(loop: Any) -> None:
    conn, _, owner = connect(loop)
    rec = Recorder(raw=True)
    head = begin(conn, rec)
    for i in range(len(HEAD_200)):
        assert not head.done() and not rec.events
        conn.data_received(HEAD_200[i : i + 1])
    assert head.done() and head.result() is None
    assert rec.events == [("head", 200)] and conn.status == 200
    feed(conn, *map(chunk, TOKENS))
    # Every token took the one-token path; the last chunk was offered too, and declined.
    assert rec.events == [("head", 200), *(("raw", t) for t in TOKENS)]
    feed(conn, LAST_CHUNK)
    assert rec.events[-1] == ("end", None) and len(rec.ends) == 1
    assert len(rec.offers_at) == len(TOKENS) + 1
    conn.release()
    assert owner.idle == [conn] and conn.state is ConnState.IDLE and conn.reused


def test_what_comes_with_the_head_reaches_the_listener_in_that_read(loop: Any) -> None:
    conn, _, _ = connect(loop)
    rec = Recorder(raw=True)
    head = begin(conn, rec)
    seen_at_head: list[list[tuple[str, Any]]] = []
    head.add_done_callback(lambda _: seen_at_head.append(list(rec.events)))
    feed(conn, HEAD_200 + chunk(TOKENS[0]))
    # Installed inside that read: the first token is there before anyone awaits the head.
    assert rec.events == [("head", 200), ("raw", TOKENS[0])]
    settle(loop)
    assert seen_at_head == [rec.events]
    conn.abort()


@settings(max_examples=150, deadline=None)
@given(
    lines=st.lists(st.text(max_size=12).map(token_line), max_size=6),
    points=st.lists(st.integers(0, 2000), max_size=12),
    raw=st.booleans(),
    listen_at=st.one_of(st.none(), st.integers(0, 12)),
)
def test_any_split_gives_the_listener_the_body_once_and_one_end(
    lines: list[bytes], points: list[int], raw: bool, listen_at: int | None
) -> None:
    """However the reads fall, and whether the listener was offered with the request or
    installed later (``listen_at``: after that many reads), it sees one 200 head, the
    whole body in order, raw offers only at chunk boundaries, and one end, last."""
    body, starts = chunked_body([*lines, token_line("", True)])
    reads = cut(HEAD_200 + body, points)
    loop = asyncio.new_event_loop()
    try:
        conn, _, owner = connect(loop)
        rec = Recorder(raw=raw)
        head = begin(conn, rec if listen_at is None else None)
        offset = -len(HEAD_200)
        for i, read in enumerate(reads):
            # Where the bytes offered raw start: the read itself, or its part after the head.
            rec.at = max(offset, 0)
            conn.data_received(read)
            offset += len(read)
            if listen_at is not None and i + 1 >= listen_at and head.done():
                conn.listen(rec)
                listen_at = None
        if listen_at is not None:
            conn.listen(rec)
        assert head.done() and head.exception() is None
        assert rec.body == b"".join([*lines, token_line("", True)])
        assert rec.ends == [("end", None)] and rec.events[-1] == ("end", None)
        assert set(rec.offers_at) <= starts
        if rec.events[0][0] == "head":
            assert rec.events[0] == ("head", 200)
        conn.release()
        assert owner.idle == [conn]
    finally:
        loop.close()


def test_a_reply_framed_by_length_goes_through_h11(loop: Any) -> None:
    """Foreign servers answer 200 with Content-Length: no raw offers, the same calls."""
    conn, _, owner = connect(loop)
    rec = Recorder(raw=True)
    head = begin(conn, rec)
    reply = plain_reply(200, b"".join(TOKENS))
    feed(conn, reply[:40], reply[40:-10], reply[-10:])
    assert head.done()
    assert rec.events[0] == ("head", 200) and rec.body == b"".join(TOKENS)
    assert rec.ends == [("end", None)] and not rec.offers_at
    conn.release()
    assert owner.idle == [conn]


def test_only_a_200_head_installs_the_offered_listener(loop: Any) -> None:
    conn, _, owner = connect(loop)
    rec = Recorder(raw=True)
    head = begin(conn, rec)
    error = b'{"error":"model \'x\' not found"}'
    feed(conn, plain_reply(404, error))
    assert head.done() and conn.status == 404
    # The body came with the head and was kept; the offered listener heard nothing.
    assert run(loop, conn.read_body(1000)) == error
    assert rec.events == []
    conn.release()
    assert owner.idle == [conn]


def test_read_body_gets_reads_from_before_and_after_it_was_called(loop: Any) -> None:
    conn, _, owner = connect(loop)
    begin(conn, None, b"GET", b"/api/tags", None)
    feed(conn, TAGS_REPLY[:-10])

    async def later() -> bytes:
        task = asyncio.ensure_future(conn.read_body(1000))
        await asyncio.sleep(0)
        feed(conn, TAGS_REPLY[-10:])
        return await task

    assert run(loop, later()) == TAGS
    conn.release()
    assert owner.idle == [conn]


def test_read_body_refuses_more_than_its_limit(loop: Any) -> None:
    conn, transport, owner = connect(loop)
    begin(conn, None, b"GET", b"/api/tags", None)
    feed(conn, plain_reply(200, b"x" * 100))
    with pytest.raises(UpstreamUnavailable, match="exceeded 10 bytes"):
        run(loop, conn.read_body(10))
    conn.release()
    assert transport.calls == ["abort"] and owner.idle == []


def test_an_invalid_head_fails_the_exchange(loop: Any) -> None:
    conn, transport, _ = connect(loop)
    rec = Recorder()
    head = begin(conn, rec)
    feed(conn, b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    with pytest.raises(UpstreamUnavailable, match="invalid HTTP response"):
        run(loop, head)
    assert transport.calls == ["abort"] and conn.got_response_bytes
    assert rec.events == []


# --- the connection: how an exchange fails ----------------------------------------------


@pytest.mark.parametrize("reset", [False, True], ids=["closed", "reset"])
def test_a_cut_mid_body_is_one_error(loop: Any, reset: bool) -> None:
    conn, transport, owner = connect(loop)
    rec = Recorder(raw=True)
    begin(conn, rec)
    # The second chunk stops three bytes short of its data's end.
    feed(conn, HEAD_200, chunk(TOKENS[0]), chunk(TOKENS[1])[:-5])
    transport.lose(ConnectionResetError() if reset else None)
    settle(loop)
    exc = rec.error()
    assert isinstance(exc, UpstreamUnavailable)
    assert exc.message == f"Ollama {'reset' if reset else 'closed'} the connection mid-response"
    # What arrived was passed on as it came, the partial chunk's data too.
    assert rec.body == TOKENS[0] + TOKENS[1][:-3]
    assert set(owner.forgotten) == {conn} and conn.state is ConnState.CLOSED
    conn.release()
    assert owner.idle == [] and len(rec.ends) == 1


def test_a_cut_before_listen_is_replayed_after_the_data(loop: Any) -> None:
    conn, transport, _ = connect(loop)
    head = begin(conn)
    feed(conn, HEAD_200 + chunk(TOKENS[0]))
    assert head.done()
    transport.lose()
    settle(loop)
    rec = Recorder()
    conn.listen(rec)
    assert rec.events[0] == ("data", TOKENS[0])
    assert "closed the connection" in rec.error().message


def test_a_malformed_chunk_is_an_error_and_closes(loop: Any) -> None:
    conn, transport, owner = connect(loop)
    rec = Recorder(raw=True)
    begin(conn, rec)
    feed(conn, HEAD_200, chunk(TOKENS[0]), b"zz\r\n" + TOKENS[1] + b"\r\n")
    exc = rec.error()
    assert isinstance(exc, UpstreamUnavailable) and "malformed chunked body" in exc.message
    assert transport.calls == ["abort"] and conn.state is ConnState.CLOSED
    # Whatever else arrives is dropped, and told to nobody.
    feed(conn, chunk(TOKENS[2]))
    settle(loop)
    assert len(rec.ends) == 1 and rec.body == TOKENS[0]
    assert set(owner.forgotten) == {conn}


def test_bytes_on_an_idle_connection_close_it(loop: Any) -> None:
    conn, transport, owner = connect(loop)
    rec = Recorder()
    begin(conn, rec)
    feed(conn, STREAM_REPLY)
    conn.release()
    assert owner.idle == [conn] and transport.calls == []
    feed(conn, b"HTTP/1.1 200 OK\r\n")
    assert transport.calls == ["abort"] and conn.state is ConnState.CLOSED
    assert set(owner.forgotten) == {conn}
    assert rec.ends == [("end", None)]


@pytest.mark.parametrize(
    "reads",
    [
        [STREAM_REPLY + b"HTTP/1.1 200 OK\r\n"],
        [STREAM_REPLY, b"\r\n"],
        [TAGS_REPLY + b"{}"],
        [TAGS_REPLY, b"HTTP/1.1 200 OK\r\n\r\n"],
    ],
    ids=["chunked-same-read", "chunked-later-read", "length-same-read", "length-later-read"],
)
def test_bytes_after_the_end_keep_the_connection_from_reuse(loop: Any, reads: list[bytes]) -> None:
    conn, transport, owner = connect(loop)
    rec = Recorder()
    begin(conn, rec)
    feed(conn, *reads)
    # The body itself was whole: the listener saw a clean end, once.
    assert rec.ends == [("end", None)]
    conn.release()
    assert owner.idle == [] and transport.calls == ["abort"]
    assert conn.state is ConnState.CLOSED


def test_silence_before_the_head_fails_send(loop: Any) -> None:
    conn, transport, _ = connect(loop, io_timeout=0.05)
    head = begin(conn)
    with pytest.raises(UpstreamTimeout, match=re.escape("sent no response within 0.05s")):
        run(loop, head)
    assert transport.calls == ["abort"]


def test_silence_mid_body_fails_the_body_and_steady_reads_do_not(loop: Any) -> None:
    conn, transport, _ = connect(loop, io_timeout=0.2)
    begin(conn)
    feed(conn, HEAD_200)
    parts: list[bytes] = []
    reader = BodyReader(loop, parts.append)
    conn.listen(reader)
    lines = [token_line(f" t{i}") for i in range(8)]

    async def trickle() -> None:
        # A read every fifth of the deadline keeps the stream alive well past it.
        for line in lines:
            await asyncio.sleep(0.04)
            feed(conn, chunk(line))

    run(loop, trickle())
    assert not reader.done.done() and parts == lines
    with pytest.raises(UpstreamTimeout, match=re.escape("went silent for 0.2s mid-response")):
        run(loop, reader.done)
    assert transport.calls == ["abort"]


def test_time_paused_by_our_backpressure_is_not_silence(loop: Any) -> None:
    conn, transport, _ = connect(loop, io_timeout=0.05)
    begin(conn)
    feed(conn, HEAD_200)
    reader = BodyReader(loop, lambda _: None)
    conn.listen(reader)
    conn.pause_reading()
    run(loop, asyncio.sleep(0.2))
    assert not reader.done.done() and transport.calls == ["pause_reading"]
    conn.resume_reading()
    with pytest.raises(UpstreamTimeout):
        run(loop, reader.done)
    assert transport.calls == ["pause_reading", "resume_reading", "abort"]


def test_pause_and_resume_are_idempotent(loop: Any) -> None:
    conn, transport, _ = connect(loop)
    conn.pause_reading()  # not in an exchange: nothing to pause
    begin(conn)
    conn.pause_reading()
    conn.pause_reading()
    conn.resume_reading()
    conn.resume_reading()
    assert transport.calls == ["pause_reading", "resume_reading"]
    conn.abort()


@pytest.mark.parametrize("where", ["raw", "data"])
def test_a_listener_that_raises_a_gateway_error_fails_with_it(loop: Any, where: str) -> None:
    conn, transport, owner = connect(loop)
    fail_with = UpstreamFailed("Ollama reported an error")
    rec = Recorder(raw=True, fail_in=where, fail_with=fail_with)
    begin(conn, rec)
    feed(conn, HEAD_200, chunk(TOKENS[0]) + chunk(TOKENS[1]))
    assert rec.error() is fail_with
    assert transport.calls == ["abort"]
    feed(conn, chunk(TOKENS[2]), LAST_CHUNK)
    conn.release()
    assert len(rec.ends) == 1 and owner.idle == []


def test_a_listener_with_a_bug_is_an_internal_error(
    loop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    conn, transport, _ = connect(loop)
    rec = Recorder(raw=True, fail_in="raw", fail_with=RuntimeError("oops"))
    begin(conn, rec)
    with caplog.at_level(logging.ERROR, logger="clawproxy.upstream"):
        feed(conn, HEAD_200, chunk(TOKENS[0]))
    exc = rec.error()
    assert isinstance(exc, UpstreamFailed)
    assert exc.message == "internal error while relaying the reply: RuntimeError"
    assert [r.getMessage() for r in caplog.records] == ["exchange listener failed"]
    assert transport.calls == ["abort"]


def test_a_listener_whose_on_head_raises_is_not_installed(loop: Any) -> None:
    conn, transport, _ = connect(loop)
    rec = Recorder(fail_in="head")
    head = begin(conn, rec)
    feed(conn, STREAM_REPLY)
    with pytest.raises(UpstreamFailed, match="the listener gave up"):
        run(loop, head)
    # It heard its head call only: send() raised instead of on_error.
    assert rec.events == [("head", 200)]
    assert transport.calls == ["abort"]


def test_a_listener_failing_on_a_replayed_body_gets_an_error_not_the_end(loop: Any) -> None:
    conn, transport, owner = connect(loop)
    begin(conn)
    feed(conn, STREAM_REPLY)
    assert conn.complete
    rec = Recorder(fail_in="data")
    conn.listen(rec)
    assert rec.events[-1][0] == "error" and len(rec.ends) == 1
    conn.release()
    assert owner.idle == [] and transport.calls == ["abort"]


def test_the_caller_ending_an_exchange_first_is_not_told(loop: Any) -> None:
    """release() or abort() mid-body drops the listener: the caller knows already."""
    conn, transport, owner = connect(loop)
    rec = Recorder()
    begin(conn, rec)
    feed(conn, HEAD_200, chunk(TOKENS[0]))
    conn.release()  # not complete: closed, not pooled
    settle(loop)
    feed(conn, chunk(TOKENS[1]))
    assert rec.events == [("head", 200), ("data", TOKENS[0])]
    assert transport.calls == ["abort"] and owner.idle == []


# --- the connection: finishing in the background ----------------------------------------


async def until(predicate: Callable[[], bool]) -> None:
    """Poll a condition the loop's timers will bring about (``run`` bounds the wait)."""
    while not predicate():
        await asyncio.sleep(0.005)


def answered(loop: Any, io_timeout: float = 60.0) -> tuple[UpstreamConnection, Any, Any, Any]:
    """A connection whose body came up to the done line, its last chunk not yet."""
    conn, transport, owner = connect(loop, io_timeout)
    rec = Recorder(raw=True)
    begin(conn, rec)
    feed(conn, HEAD_200, *map(chunk, TOKENS))
    assert rec.body == b"".join(TOKENS) and not rec.ends
    return conn, transport, owner, rec


@pytest.mark.parametrize("last", [[LAST_CHUNK], [b"0\r\n", b"\r\n"]], ids=["whole", "split"])
def test_a_last_chunk_after_the_caller_left_returns_the_connection(
    loop: Any, last: list[bytes]
) -> None:
    conn, transport, owner, rec = answered(loop)
    conn.finish_in_background()
    assert repr(conn).startswith("<UpstreamConnection active") and owner.idle == []
    feed(conn, *last)
    assert conn.state is ConnState.IDLE and owner.idle == [conn] and conn.reused
    # The caller's listener was dropped: it hears nothing more, not even the end.
    assert not rec.ends and transport.calls == []
    # And the connection serves the next exchange as usual.
    rec2 = Recorder()
    begin(conn, rec2)
    feed(conn, STREAM_REPLY)
    assert rec2.body == b"".join(TOKENS) and rec2.ends == [("end", None)]


def test_finishing_a_body_that_ended_already_is_release(loop: Any) -> None:
    conn, transport, owner, rec = answered(loop)
    feed(conn, LAST_CHUNK)
    assert rec.ends == [("end", None)]
    conn.finish_in_background()
    assert owner.idle == [conn] and transport.calls == []


def test_silence_after_the_caller_left_closes_and_tells_nobody(
    loop: Any, caplog: pytest.LogCaptureFixture
) -> None:
    conn, transport, owner, rec = answered(loop, io_timeout=0.05)
    conn.finish_in_background()
    with caplog.at_level(logging.INFO, logger="clawproxy.upstream"):
        run(loop, until(lambda: conn.state is ConnState.CLOSED))
    assert transport.calls == ["abort"] and owner.idle == [] and set(owner.forgotten) == {conn}
    assert not rec.ends and not caplog.records
    # A last chunk that comes after all is dropped.
    feed(conn, LAST_CHUNK)
    assert owner.idle == []


@pytest.mark.parametrize(
    "reads",
    [
        [chunk(b"tail\n")],
        [chunk(b"tail\n") + LAST_CHUNK],
        [LAST_CHUNK + b"HTTP/1.1 200 OK\r\n"],
        [b"zz\r\n"],
        [CLOSE],
    ],
    ids=["a-chunk", "a-chunk-then-the-end", "bytes-after-the-end", "malformed", "cut"],
)
def test_anything_but_the_last_chunk_after_the_caller_left_closes(
    loop: Any, reads: list[bytes | str], caplog: pytest.LogCaptureFixture
) -> None:
    conn, transport, owner, rec = answered(loop)
    conn.finish_in_background()
    with caplog.at_level(logging.INFO, logger="clawproxy.upstream"):
        for read in reads:
            if read == CLOSE:
                transport.lose()
            else:
                assert isinstance(read, bytes)
                feed(conn, read)
        settle(loop)
    assert conn.state is ConnState.CLOSED and owner.idle == [] and set(owner.forgotten) == {conn}
    assert transport.calls in (["abort"], [])  # [] when Ollama closed it
    assert not rec.ends and not caplog.records


def test_a_connection_paused_by_the_caller_reads_on_to_its_end(loop: Any) -> None:
    """The caller's flow control let go of it: nobody would resume it, so it resumes."""
    conn, transport, owner, _ = answered(loop)
    conn.pause_reading()
    conn.finish_in_background()
    assert transport.calls == ["pause_reading", "resume_reading"]
    feed(conn, LAST_CHUNK)
    assert owner.idle == [conn]


def test_finishing_a_failed_exchange_does_nothing_more(loop: Any) -> None:
    conn, transport, owner, rec = answered(loop)
    transport.lose()
    settle(loop)
    assert rec.error()
    conn.finish_in_background()
    assert conn.state is ConnState.CLOSED and owner.idle == [] and len(rec.ends) == 1


def test_the_pool_never_hands_out_a_connection_finishing_in_the_background(loop: Any) -> None:
    pool = new_pool(loop)
    first = Peer([HEAD_200, *map(chunk, TOKENS)], [TAGS_REPLY])
    loop.peers.extend([first, Peer([TAGS_REPLY])])

    async def scenario() -> tuple[UpstreamConnection, UpstreamConnection]:
        rec = Recorder()
        chat = await pool.send(b"POST", b"/api/chat", b"{}", listener=rec)
        await until(lambda: rec.body == b"".join(TOKENS))
        chat.finish_in_background()
        tags, body = await fetch(pool)
        assert body == TAGS
        tags.release()
        return chat, tags

    chat, tags = run(loop, scenario())
    assert chat is not tags and pool.connects == 2 and pool.idle_connections == 1
    chat.data_received(LAST_CHUNK)
    assert pool.idle_connections == 2 and chat.state is ConnState.IDLE
    pool.close()


def test_one_connection_serves_chats_and_model_lists_in_turn(loop: Any) -> None:
    """h11 is told about the next exchange at release (a chat again, most likely); another
    kind of request on the same connection must still be framed right."""
    conn, transport, owner = connect(loop)
    for method, target, reply, body in [
        (b"POST", b"/api/chat", STREAM_REPLY, b"".join(TOKENS)),
        (b"POST", b"/api/chat", STREAM_REPLY, b"".join(TOKENS)),
        (b"GET", b"/api/tags", TAGS_REPLY, TAGS),
        (b"POST", b"/api/chat", plain_reply(200, TAGS), TAGS),
        (b"HEAD", b"/", b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", b""),
    ]:
        head = begin(conn, None, method, target, None)
        feed(conn, reply)
        assert head.done() and conn.status == 200
        assert run(loop, conn.read_body(1 << 20)) == body
        conn.release()
        assert conn.state is ConnState.IDLE
    assert len(owner.idle) == 5 and len(transport.writes) == 5 and transport.calls == []


def test_the_connection_never_imports_the_pool() -> None:
    source = Path(__file__).parent.parent / "clawproxy" / "ollama" / "connection.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert "clawproxy.ollama" not in imported
    assert not {name for name in imported if name.startswith("clawproxy.ollama.")}


# --- the pool ----------------------------------------------------------------------------


def test_idle_connections_are_reused_most_recent_first(loop: Any) -> None:
    pool = new_pool(loop)
    first, second = Peer(*[[TAGS_REPLY]] * 3), Peer(*[[TAGS_REPLY]] * 3)
    loop.peers.extend([first, second])

    async def scenario() -> None:
        (a, body_a), (b, body_b) = await asyncio.gather(fetch(pool), fetch(pool))
        assert body_a == body_b == TAGS and pool.connects == 2
        a.release()
        b.release()
        c, _ = await fetch(pool)
        d, _ = await fetch(pool)
        assert (c, d) == (b, a)
        c.release()
        d.release()

    run(loop, scenario())
    assert pool.connects == 2 and pool.open_connections == 2
    assert len(first.requests) == len(second.requests) == 2
    pool.close()
    settle(loop)
    assert pool.open_connections == 0


def test_no_more_than_max_idle_connections_wait(loop: Any) -> None:
    pool = new_pool(loop, max_idle=1)
    loop.peers.extend([Peer([TAGS_REPLY]), Peer([TAGS_REPLY])])

    async def scenario() -> tuple[UpstreamConnection, UpstreamConnection]:
        (a, _), (b, _) = await asyncio.gather(fetch(pool), fetch(pool))
        a.release()
        b.release()
        return a, b

    a, b = run(loop, scenario())
    settle(loop)
    assert a.state is ConnState.IDLE and b.state is ConnState.CLOSED
    assert isinstance(b.transport, FakeTransport) and b.transport.calls == ["abort"]
    assert pool.open_connections == 1 and list(pool._idle) == [a]
    pool.close()


def test_a_stale_keep_alive_connection_is_retried_once(loop: Any) -> None:
    """Ollama closed the idle connection, but the FIN was not seen before it was taken:
    nothing came back, so nothing was generated. One retry on a fresh connection."""
    pool = new_pool(loop)
    stale, fresh = Peer([TAGS_REPLY], [CLOSE]), Peer([TAGS_REPLY])
    loop.peers.extend([stale, fresh])
    meanwhile: list[int] = []

    async def scenario() -> tuple[UpstreamConnection, UpstreamConnection, bytes]:
        first, _ = await fetch(pool)
        first.release()
        second, body = await fetch(pool, meanwhile=lambda: meanwhile.append(1))
        second.release()
        return first, second, body

    first, second, body = run(loop, scenario())
    assert body == TAGS and second is not first and pool.connects == 2
    # The request went to both; the caller's set-up ran once.
    assert len(stale.requests) == 2 and len(fresh.requests) == 1
    assert meanwhile == [1]
    assert first.state is ConnState.CLOSED and list(pool._idle) == [second]
    pool.close()


def test_no_retry_once_a_response_byte_came(loop: Any) -> None:
    pool = new_pool(loop)
    loop.peers.extend([Peer([TAGS_REPLY], [b"HTTP/1.1 200 OK\r\nContent-", CLOSE]), Peer()])

    async def scenario() -> None:
        first, _ = await fetch(pool)
        first.release()
        with pytest.raises(UpstreamUnavailable, match="closed the connection mid-response"):
            await fetch(pool)

    run(loop, scenario())
    assert pool.connects == 1 and len(loop.peers) == 1


def test_a_fresh_connection_is_never_retried(loop: Any) -> None:
    pool = new_pool(loop)
    loop.peers.extend([Peer([CLOSE]), Peer([TAGS_REPLY])])
    with pytest.raises(UpstreamUnavailable, match="mid-response"):
        run(loop, fetch(pool))
    assert pool.connects == 1 and len(loop.peers) == 1


def test_connect_failures_are_gateway_errors(loop: Any) -> None:
    pool = new_pool(loop, connect_timeout=0.05)
    with pytest.raises(UpstreamUnavailable, match="cannot connect to Ollama at ollama:11434"):
        run(loop, fetch(pool))
    loop.hang = True
    with pytest.raises(UpstreamTimeout, match=re.escape("within 0.05s")):
        run(loop, fetch(pool))
    assert pool.connects == 0 and pool.open_connections == 0


def test_a_cancelled_send_closes_its_connection(loop: Any) -> None:
    pool = new_pool(loop)
    loop.peers.append(Peer([]))  # Ollama never answers

    async def scenario() -> None:
        task = asyncio.ensure_future(pool.send(b"POST", b"/api/chat", b"{}"))
        while not pool.open_connections:
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(loop, scenario())
    settle(loop)
    assert pool.connects == 1 and pool.open_connections == 0


def test_for_endpoint_builds_the_pool_from_the_configured_url(loop: Any) -> None:
    pool = UpstreamPool.for_endpoint(
        "http://[::1]:8080", connect_timeout=1.0, io_timeout=5.0, max_idle=2, loop=loop
    )
    assert (pool.host, pool.port, pool.max_idle, pool.io_timeout) == ("::1", 8080, 2, 5.0)
    peer = Peer([TAGS_REPLY])
    loop.peers.append(peer)
    conn, body = run(loop, fetch(pool))
    conn.release()
    assert body == TAGS and loop.dialed == [("::1", 8080)]
    assert b"\r\nHost: [::1]:8080\r\n" in peer.requests[0]
    options: dict[str, Any] = {"connect_timeout": 1.0, "io_timeout": 5.0, "max_idle": 2}
    assert UpstreamPool.for_endpoint("http://ollama", loop=loop, **options).port == 80
    with pytest.raises(ValueError, match="https"):
        UpstreamPool.for_endpoint("https://ollama:11434", loop=loop, **options)
    pool.close()
