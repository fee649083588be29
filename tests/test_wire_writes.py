"""What a stream costs on the wire: how many writes, in which order, and who may end it.

On loopback every write wakes the peer, which costs more than the Python around it, so the
gateway holds a stream's head until its first chunk and sends its last chunk with [DONE].
These tests record every transport write of the client connection.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest
from harness import Harness, ask, content_of, open_stream, read_to_last_chunk

from clawproxy.app.relay import SseRelay
from clawproxy.http.server import HttpConnection
from clawproxy.simulator import Fault, Reply


class RecordingTransport:
    """Forwards everything to the real transport and keeps a copy of each write."""

    def __init__(self, inner: asyncio.Transport, writes: list[bytes]) -> None:
        self._inner = inner
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._inner.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    recorded: list[bytes] = []
    original = HttpConnection.connection_made

    def connection_made(self: HttpConnection, transport: asyncio.BaseTransport) -> None:
        original(self, transport)
        if self.transport is not None:
            self.transport = RecordingTransport(self.transport, recorded)  # type: ignore[assignment]

    monkeypatch.setattr(HttpConnection, "connection_made", connection_made)
    return recorded


def test_a_stream_is_one_write_per_token_plus_one(gw: Harness, writes: list[bytes]) -> None:
    # Paced, so each token is its own upstream read, as with a real model.
    gw.sim.token_rate = 50.0
    gw.sim.next_reply(Reply(tokens=["alpha", " beta", " gamma"]))
    with open_stream(gw) as sock:
        body = read_to_last_chunk(sock)
    assert body.startswith(b"HTTP/1.1 200")
    # Head, role chunk and first token together; one write per later token; then the
    # finish chunk, [DONE] and the last chunk together.
    assert len(writes) == 4, writes
    first, *middle, last = writes
    assert first.startswith(b"HTTP/1.1 200") and b'"role":"assistant"' in first
    assert b'"alpha"' in first
    assert [b'" beta"' in middle[0], b'" gamma"' in middle[1]] == [True, True]
    assert b'"finish_reason":"stop"' in last and last.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")


def test_a_head_without_body_bytes_is_sent_at_once(gw: Harness, writes: list[bytes]) -> None:
    # The simulator's slow head arrives byte by byte: Ollama's 200 comes before any token.
    gw.sim.next_reply(Reply(tokens=["late"], fault=Fault(slow_headers=0.001, first_delay=0)))
    with open_stream(gw) as sock:
        body = read_to_last_chunk(sock)
    assert b'"late"' in body
    assert writes[0].startswith(b"HTTP/1.1 200") and writes[0].endswith(b"\r\n\r\n")
    assert b"data:" not in writes[0]


def test_a_client_leaving_after_the_whole_answer_is_no_abort(gw: Harness) -> None:
    # Ollama's 0-chunk comes 0.3 s after its done line; the client has everything before that.
    gw.sim.next_reply(Reply(tokens=["whole"], fault=Fault(end_delay=0.3)))
    with open_stream(gw) as sock:
        body = read_to_last_chunk(sock)
        # The client has the whole answer while Ollama's reply is still open.
        assert gw.read(lambda: gw.sim.streams[-1].active)
    assert body.rstrip(b"\r\n0").endswith(b"data: [DONE]")
    assert gw.settled()
    recent = gw.read(lambda: list(gw.gateway.state.recent))
    assert [(r["status"], r["outcome"]) for r in recent] == [(200, "ok")]
    # The upstream exchange finished cleanly (in the background), so its connection is reused.
    pool = gw.gateway.pool
    assert gw.call(lambda: gw.wait_until(lambda: pool.idle_connections == 1))
    assert content_of(list(ask(gw, stream=True)))
    assert gw.read(lambda: gw.gateway.pool.connects) == 1


def test_both_hops_disable_nagle(gw: Harness) -> None:
    """One small write per token must not wait for Nagle; the loops set TCP_NODELAY."""
    assert ask(gw).choices[0].message.content

    def nodelay() -> tuple[list[int], list[int]]:
        clients = [
            c.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            for c in gw.gateway.connections.live()
            if c.transport is not None
        ]
        upstream = [
            c.transport.get_extra_info("socket").getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
            for c in gw.gateway.pool._all
            if c.transport is not None
        ]
        return clients, upstream

    clients, upstream = gw.read(nodelay)
    assert clients and upstream
    assert all(clients) and all(upstream)


def test_the_request_to_ollama_is_rendered_whole_and_exact(gw: Harness) -> None:
    """The gateway writes Ollama's request itself (h11 parses the answer): check every part."""
    assert ask(gw, messages=[{"role": "user", "content": "ünïcode"}]).choices[0].message.content
    chat = [r for r in gw.sim.requests if r.path == "/api/chat"]
    assert len(chat) == 1
    seen = chat[0]
    assert seen.method == "POST"
    assert seen.header("host") == gw.sim.endpoint.removeprefix("http://")
    assert seen.header("content-type") == "application/json"
    assert seen.header("content-length") == str(len(seen.body))
    assert seen.header("user-agent") == "clawproxy"
    assert seen.json["messages"][-1]["content"] == "ünïcode"
    assert sorted(name for name, _ in seen.headers) == [
        "accept",
        "content-length",
        "content-type",
        "host",
        "user-agent",
    ]


@pytest.mark.pure_python("it wraps SseRelay.run, a method of a compiled class")
def test_what_came_with_ollamas_head_is_written_before_the_task_wakes(
    gw: Harness, writes: list[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first token shares Ollama's first write; it goes out inside that very read."""
    seen_at_run: list[list[bytes]] = []
    original = SseRelay.run

    async def run(self: SseRelay, upstream: Any) -> bool:
        seen_at_run.append(list(writes))
        return await original(self, upstream)

    monkeypatch.setattr(SseRelay, "run", run)
    gw.sim.token_rate = 20.0
    gw.sim.next_reply(Reply(tokens=["first", " second"]))
    with open_stream(gw) as sock:
        body = read_to_last_chunk(sock)
    assert b'" second"' in body
    # When the handler's task resumed after Ollama's head, head and first token were out.
    assert len(seen_at_run) == 1
    (before_task,) = seen_at_run
    assert len(before_task) == 1, before_task
    assert before_task[0].startswith(b"HTTP/1.1 200") and b'"first"' in before_task[0]


def test_one_upstream_connection_serves_chats_and_model_lists_in_turn(gw: Harness) -> None:
    """h11 is told about the next exchange when a connection goes idle (a chat again, most
    likely); another kind of request on it must still be framed right."""
    gw.sim.next_reply(Reply(tokens=["one"]))
    assert ask(gw).choices[0].message.content == "one"
    for _ in range(2):
        assert "qwen3:32b" in [m.id for m in gw.openai_client().models.list().data]
    gw.sim.next_reply(Reply(tokens=["two"]))
    assert content_of(list(ask(gw, stream=True))) == "two"
    gw.sim.next_reply(Reply(tokens=["three"]))
    assert ask(gw).choices[0].message.content == "three"
    paths = [r.path for r in gw.sim.requests]
    assert paths.count("/api/tags") >= 1 and paths[-1] == "/api/chat"
    assert gw.read(lambda: gw.gateway.pool.connects) == 1
