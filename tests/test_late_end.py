"""Ollama's done line ends the client's exchange; the body's last chunk is housekeeping.

Go writes the terminating 0-chunk when the handler returns, in its own write after the last
flush, so it can come late (the simulator's ``end_delay``). The answer is whole at the done
line: a non-streaming client gets its 200 then, a streaming one its ``[DONE]``, the request
is logged ``ok`` and its admission slot is given back. The upstream connection finishes on
its own: back to the pool when the 0-chunk comes within ``server.timeout``, closed at that
silence deadline otherwise, and either way nothing is reported against the request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Iterator

import orjson
import pytest
import uvloop
from harness import HELLO, Harness, ask, content_of, open_stream, post_json

from clawproxy.simulator import Fault, OllamaSimulator, Reply

TOKENS = ["The", " whole", " answer"]
# The 0-chunk comes this long after the done line: well past SHORT_TIMEOUT, and long enough
# that the checks made meanwhile never race it.
END_DELAY = 1.0
SHORT_TIMEOUT = "250ms"
LONG_TIMEOUT = "10s"


@contextlib.contextmanager
def gateway(loop_kind: str, caplog: pytest.LogCaptureFixture, timeout: str) -> Iterator[Harness]:
    """A gateway with ``server.timeout`` set, and the post-conditions of conftest's ``gw``."""
    caplog.set_level(logging.INFO)
    with Harness({"server.timeout": timeout}, loop_kind=loop_kind) as h:
        yield h
        h.close_clients()
        assert h.settled(), "a request was left active or queued"
    problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not problems, problems[:3]


def late_end() -> Reply:
    return Reply(tokens=list(TOKENS), fault=Fault(end_delay=END_DELAY))


def read_stream(sock: socket.socket) -> bytes:
    """A streaming reply, read until its last chunk."""
    data = b""
    while not data.endswith(b"\r\n0\r\n\r\n"):
        chunk = sock.recv(65536)
        assert chunk, "closed before the last chunk"
        data += chunk
    return data


def ollama_still_answering(h: Harness) -> bool:
    """Whether the simulator has yet to write the last request's 0-chunk."""
    return h.read(lambda: h.sim.streams[-1].active)


def slot_back(h: Harness) -> bool:
    adm = h.gateway.state.admission
    return h.call(lambda: h.wait_until(lambda: adm.active == 0))


def outcomes(h: Harness) -> list[tuple[int, str]]:
    return h.read(lambda: [(r["status"], r["outcome"]) for r in h.gateway.state.recent])


def upstream_errors(h: Harness) -> dict[str, int]:
    return h.read(lambda: dict(h.gateway.state.upstream_errors))


# --- past the silence deadline: the answer stands, the connection is closed -----------------


def test_a_whole_reply_past_the_deadline_is_200(
    loop_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    with gateway(loop_kind, caplog, SHORT_TIMEOUT) as h:
        h.sim.next_reply(late_end())
        status, _, body = post_json(h, "/v1/chat/completions", HELLO)
        assert status == 200, body
        choice = orjson.loads(body)["choices"][0]
        assert choice["message"]["content"] == "".join(TOKENS)
        assert choice["finish_reason"] == "stop"
        assert slot_back(h)
        assert outcomes(h) == [(200, "ok")] and upstream_errors(h) == {}
        # The silence deadline closed the unfinished connection, and told nobody.
        pool = h.gateway.pool
        assert h.call(lambda: h.wait_until(lambda: pool.open_connections == 0))
        assert outcomes(h) == [(200, "ok")] and upstream_errors(h) == {}
        h.sim.next_reply(Reply(tokens=["next"]))
        assert ask(h).choices[0].message.content == "next"
        assert h.read(lambda: pool.connects) == 2


def test_a_stream_past_the_deadline_ends_ok(
    loop_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    with gateway(loop_kind, caplog, SHORT_TIMEOUT) as h:
        h.sim.next_reply(late_end())
        with open_stream(h) as sock:
            body = read_stream(sock)
        assert body.startswith(b"HTTP/1.1 200")
        assert all(orjson.dumps(t) in body for t in TOKENS)
        assert body.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
        assert b'"error"' not in body
        assert slot_back(h)
        pool = h.gateway.pool
        assert h.call(lambda: h.wait_until(lambda: pool.open_connections == 0))
        assert outcomes(h) == [(200, "ok")] and upstream_errors(h) == {}
        stats = h.read(lambda: h.gateway.state.recent[-1])
        assert stats["tokens"] == len(TOKENS)


# --- within the deadline: the slot is back at once, the connection is reused ----------------


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_the_slot_is_back_before_the_last_chunk(
    loop_kind: str, caplog: pytest.LogCaptureFixture, stream: bool
) -> None:
    with gateway(loop_kind, caplog, LONG_TIMEOUT) as h:
        h.sim.next_reply(late_end())
        if stream:
            assert content_of(list(ask(h, stream=True))) == "".join(TOKENS)
        else:
            assert ask(h).choices[0].message.content == "".join(TOKENS)
        assert slot_back(h)
        # The client is served and the slot free while Ollama's reply is still open.
        assert ollama_still_answering(h)
        assert outcomes(h) == [(200, "ok")]
        # The last chunk came within the deadline: the connection went back to the pool.
        pool = h.gateway.pool
        assert h.call(lambda: h.wait_until(lambda: pool.idle_connections == 1, END_DELAY * 5))
        h.sim.next_reply(Reply(tokens=["again"]))
        assert ask(h).choices[0].message.content == "again"
        assert h.read(lambda: pool.connects) == 1
        assert upstream_errors(h) == {}


def test_bytes_after_a_done_line_still_close_the_connection(
    loop_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The extra line comes after the client's exchange ended: the connection finishing in
    the background sees it, and closes instead of going back to the pool."""
    with gateway(loop_kind, caplog, LONG_TIMEOUT) as h:
        fault = Fault(extra_after_done=True, end_delay=END_DELAY)
        h.sim.next_reply(Reply(tokens=["fine"], fault=fault))
        assert ask(h).choices[0].message.content == "fine"
        pool = h.gateway.pool
        assert h.call(lambda: h.wait_until(lambda: pool.open_connections == 0, END_DELAY * 5))
        h.sim.next_reply(Reply(tokens=["again"]))
        assert content_of(list(ask(h, stream=True))) == "again"
        assert h.read(lambda: pool.connects) == 2
        assert outcomes(h) == [(200, "ok"), (200, "ok")] and upstream_errors(h) == {}


# --- the simulator's end_delay ------------------------------------------------------------


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_end_delay_writes_the_last_chunk_late_and_alone(kind: str) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        async with OllamaSimulator(token_rate=None) as sim:
            sim.next_reply(Reply(tokens=["a"], fault=Fault(end_delay=0.2)))
            reader, writer = await asyncio.open_connection("127.0.0.1", sim.port)
            body = b'{"model":"qwen3:32b","messages":[{"role":"user","content":"hi"}]}'
            writer.write(
                b"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body)
            )
            data = b""
            while b'"done":true' not in data or not data.endswith(b"\r\n"):
                data += await reader.read(65536)
            done_at = loop.time()
            assert not data.endswith(b"\r\n0\r\n\r\n")
            assert sim.streams[-1].active
            assert await reader.readexactly(5) == b"0\r\n\r\n"
            assert loop.time() - done_at >= 0.15
            assert await sim.streams[-1].wait_ended(5) == "complete"
            writer.close()
            await writer.wait_closed()

    factory = uvloop.new_event_loop if kind == "uvloop" else None
    with asyncio.Runner(loop_factory=factory) as runner:
        runner.run(asyncio.wait_for(scenario(), 20))
