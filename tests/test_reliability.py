"""Upstream faults and slow parties: heartbeats, stalls, garbage, stale connections."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
from harness import (
    HELLO,
    Harness,
    ask,
    client,
    content_of,
    error_of,
    open_stream,
    post_json,
    read_to_last_chunk,
    request,
)

from clawproxy.simulator import Fault, Reply


def test_heartbeats_keep_a_slow_first_token_alive() -> None:
    settings = {"server.heartbeat_interval": "100ms", "server.timeout": "5s"}
    with Harness(settings) as h:
        h.sim.next_reply(Reply(tokens=["late", " answer"], fault=Fault(first_delay=0.45)))
        sock = open_stream(h)
        sock.settimeout(5)
        data = read_to_last_chunk(sock)
        sock.close()
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
        assert body.count(b": keep-alive\n\n") >= 2
        # The heartbeats came first, then the real stream, ending with [DONE].
        assert body.index(b": keep-alive") < body.index(b"data: {")
        assert b"data: [DONE]" in body
        # And the official client ignores the comments.
        h.sim.next_reply(Reply(tokens=["late", " answer"], fault=Fault(first_delay=0.3)))
        assert content_of(list(ask(h, stream=True))) == "late answer"


def test_upstream_error_after_a_heartbeat_is_an_sse_error_event() -> None:
    settings = {"server.heartbeat_interval": "100ms", "server.timeout": "400ms"}
    with Harness(settings) as h:
        h.sim.next_reply(Reply(tokens=["x"], fault=Fault(blackhole=True)))
        with pytest.raises(openai.APIError) as info:
            list(ask(h, stream=True))
        assert not isinstance(info.value, openai.APIStatusError)
        assert "no response within" in info.value.message
        assert h.settled()


def test_stall_mid_stream_is_an_error_event_at_the_chunk_deadline() -> None:
    with Harness({"server.timeout": "300ms"}) as h:
        h.sim.next_reply(Reply(tokens=["a", "b", "c", "d"], fault=Fault(stall_after=2)))
        started = time.monotonic()
        received: list[Any] = []
        with pytest.raises(openai.APIError) as info:
            for chunk in ask(h, stream=True):
                received.append(chunk)
        assert content_of(received) == "ab"
        assert "silent" in info.value.message
        assert time.monotonic() - started < 5
        assert h.read(lambda: h.gateway.state.upstream_errors["upstream_timeout"]) == 1
        # The stalled upstream connection was closed, so Ollama stops generating.
        assert h.call(lambda: h.sim.streams[-1].wait_ended(timeout=2)) in ("client_closed", "fault")
        assert h.settled()


def test_a_long_healthy_stream_is_never_cut_by_the_silence_deadline() -> None:
    # 30 tokens at 20/s take 1.5 s, five times the 300 ms silence deadline.
    with Harness({"server.timeout": "300ms"}, sim_options={"token_rate": 20.0}) as h:
        tokens = [f" {n}" for n in range(30)]
        h.sim.next_reply(Reply(tokens=tokens))
        assert content_of(list(ask(h, stream=True))) == "".join(tokens)


def test_garbage_upstream_is_502(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["x"], fault=Fault(garbage=True)))
    status, _, body = post_json(gw, "/v1/chat/completions", HELLO)
    assert status == 502
    assert b"SSH" not in body
    assert error_of(body)["code"] == "upstream_unavailable"


def test_short_non_stream_body_is_502(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["x", "y"], fault=Fault(short_body=True)))
    status, _, body = post_json(gw, "/v1/chat/completions", HELLO)
    assert status == 502
    error_of(body)


def test_bytes_after_done_are_ignored_and_the_connection_not_reused(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["fine"], fault=Fault(extra_after_done=True)))
    assert content_of(list(ask(gw, stream=True))) == "fine"
    gw.sim.next_reply(Reply(tokens=["again"]))
    assert ask(gw).choices[0].message.content == "again"
    # The second request needed a fresh upstream connection.
    assert gw.read(lambda: gw.gateway.pool.connects) == 2


def test_ollama_closing_an_idle_connection_is_not_a_failure(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["one"]))
    assert ask(gw).choices[0].message.content == "one"
    # Ollama (here: the simulator) closes the idle keep-alive connection behind our back.
    assert gw.call(lambda: _drop_idle(gw)) == 1
    gw.sim.next_reply(Reply(tokens=["two"]))
    assert ask(gw).choices[0].message.content == "two"
    assert len([r for r in gw.sim.requests if r.path == "/api/chat"]) == 2


def test_stale_pooled_connection_is_retried_once_on_a_fresh_one(gw: Harness) -> None:
    """The race itself: the pool hands out a connection Ollama has just closed, before the
    FIN is seen. Nothing came back, so nothing was generated: one retry, then success."""
    assert ask(gw).choices[0].message.content

    async def race() -> tuple[bool, bool, int]:
        await gw.wait_until(lambda: any(c.idle for c in gw.sim._connections))
        pool = gw.gateway.pool
        stale = pool._idle[-1]
        connects = pool.connects
        gw.sim.drop_idle_connections()
        # No await between the close and the send: the pool cannot have noticed yet.
        handed_out_stale = not stale.transport.is_closing()
        upstream = await pool.send(b"GET", b"/api/tags", None, lambda: meanwhile.append(1))
        try:
            await upstream.read_body(1 << 20)
        finally:
            upstream.release()
        return handed_out_stale, upstream is not stale, pool.connects - connects

    meanwhile: list[int] = []
    handed_out_stale, fresh, new_connections = gw.call(race)
    assert handed_out_stale
    assert fresh and new_connections == 1
    # The caller's set-up ran once, though the request was written twice.
    assert meanwhile == [1]


async def _drop_idle(h: Harness) -> int:
    # The simulator marks its side idle just after its last write; wait for that.
    await h.wait_until(lambda: any(c.idle for c in h.sim._connections))
    # Whether or not the FIN reaches the pool first, the next request must succeed.
    return h.sim.drop_idle_connections()


def test_model_allow_list_is_checked_before_anything_goes_upstream() -> None:
    with Harness({"model.allowed": ["qwen3:32b"]}) as h:
        with pytest.raises(openai.NotFoundError) as info:
            ask(h, model="llama3.2:latest")
        assert info.value.body["code"] == "model_not_found"  # type: ignore[index]
        assert len(h.sim.requests) == 0
        assert ask(h).choices[0].message.content


def test_non_reading_client_is_dropped_at_the_send_deadline() -> None:
    with Harness({"server.send_timeout": "300ms"}) as h:
        h.sim.next_reply(Reply(tokens=["x" * 500], fault=Fault(flood=True)))
        sock = open_stream(h, rcvbuf=4096)
        try:
            assert h.call(lambda: h.wait_until(lambda: len(h.sim.streams) == 1))
            outcome = h.call(lambda: h.sim.streams[-1].wait_ended(timeout=5))
            assert outcome == "client_closed"
            assert h.read(lambda: h.gateway.state.refused["client_write_timeout"]) == 1
            assert h.settled()
        finally:
            sock.close()


def test_sse_injection_in_content_stays_inside_one_event(gw: Harness) -> None:
    evil = "\n\ndata: [DONE]\n\nevent: x\r\nid: 1\n\n"
    gw.sim.next_reply(Reply(tokens=["before", evil, "after"]))
    chunks = list(ask(gw, stream=True))
    assert content_of(chunks) == "before" + evil + "after"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_normal_requests_work_after_every_kind_of_failure(gw: Harness) -> None:
    faults = [
        Fault(reset_after=1),
        Fault(error_line_after=1),
        Fault(truncate_chunked=1),
        Fault(garbage=True),
        Fault(status=500, body=b"<html>x</html>", content_type="text/html"),
    ]
    for fault in faults:
        gw.sim.next_reply(Reply(tokens=["a", "b"], fault=fault))
        with pytest.raises(openai.APIError):
            list(ask(gw, stream=True))
    gw.sim.next_reply(Reply(tokens=["ok"]))
    assert client(gw).chat.completions.create(model="qwen3:32b", messages=HELLO["messages"])
    assert request(gw, "GET", "/health")[0] == 200
    assert json.loads(request(gw, "GET", "/health")[2])["status"] == "ok"
