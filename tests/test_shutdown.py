"""Graceful shutdown (RELIABILITY checklist 46): drain, then cut what is left, clearly."""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import socket
import time

import pytest
from harness import Harness, read_until_closed

from clawproxy.simulator import Reply


def read_some(sock: socket.socket, until: bytes, timeout: float = 5) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while until not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def stream(h: Harness, kind: str = "hi") -> socket.socket:
    """A streaming chat request on a raw socket, sent and not read."""
    body = json.dumps({"messages": [{"role": "user", "content": kind}], "stream": True})
    sock = socket.create_connection(("127.0.0.1", h.port), timeout=5)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body.encode())
    )
    return sock


def test_drain_finishes_short_streams_and_cuts_long_ones_clearly() -> None:
    settings = {"gateway.max_concurrent": 2, "gateway.queue_size": 1}
    with Harness(settings, sim_options={"token_rate": 20.0}) as h:
        replies = {"short": Reply(tokens=[" s"] * 4), "long": Reply(tokens=[" l"] * 200)}
        h.sim.script = lambda req: replies[req["messages"][0]["content"]]

        long_stream = stream(h, "long")
        short_stream = stream(h, "short")
        assert b"data: {" in read_some(long_stream, b"data: {")
        assert b"data: {" in read_some(short_stream, b"data: {")
        queued = stream(h, "short")
        adm = h.gateway.state.admission
        assert h.call(lambda: h.wait_until(lambda: adm.waiting == 1))
        idle = socket.create_connection(("127.0.0.1", h.port), timeout=5)
        idle.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_some(idle, b"uptime").startswith(b"HTTP/1.1 200")

        started = time.monotonic()
        stopping = asyncio.run_coroutine_threadsafe(h.gateway.stop(drain_timeout=0.6), h.loop)
        try:
            # Queued: a 503 at once. Idle keep-alive: closed. New connections: refused.
            refused = read_until_closed(queued)
            assert refused.startswith(b"HTTP/1.1 503")
            assert b"shutting_down" in refused
            assert read_until_closed(idle) == b""
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", h.port), timeout=1).close()
            # The short stream finishes whole within the drain deadline.
            short = read_until_closed(short_stream)
            assert short.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
            # The long one is cut at the deadline with an error event and no [DONE].
            cut = read_until_closed(long_stream)
            assert b"shutting down" in cut
            assert b"[DONE]" not in cut
            stopping.result(5)
            assert time.monotonic() - started < 3
        finally:
            for sock in (long_stream, short_stream, queued, idle):
                sock.close()
        assert adm.rejected["shutting_down"] == 1
        assert (adm.active, adm.waiting) == (0, 0)


def get(port: int, path: str, conn: http.client.HTTPConnection | None = None) -> tuple[int, bytes]:
    own = conn is None
    conn = conn or http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        if own:
            conn.close()


def test_admin_port_answers_through_the_drain_and_closes_last(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """During the drain nginx must see the public port refuse, while an operator can still
    read admin /health and /metrics; a stream cut at the deadline is logged as
    shutting_down, not as a client's abort."""
    caplog.set_level(logging.INFO)
    with Harness(sim_options={"token_rate": 20.0}) as h:
        h.sim.script = lambda req: Reply(tokens=[" l"] * 400)  # 20 s: outlives the drain
        admin = h.gateway.admin_port
        kept = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)  # a keep-alive scraper
        assert get(admin, "/health", kept)[0] == 200
        long_stream = stream(h)
        assert b"data: {" in read_some(long_stream, b"data: {")
        stopping = asyncio.run_coroutine_threadsafe(h.gateway.stop(drain_timeout=1.5), h.loop)
        try:
            assert h.call(lambda: h.wait_until(lambda: h.gateway.draining))
            with pytest.raises(OSError):
                socket.create_connection(("127.0.0.1", h.port), timeout=1).close()
            # The scraper's kept-alive connection and a new one both answer.
            status, body = get(admin, "/health", kept)
            assert (status, json.loads(body)["status"]) == (503, "draining")
            status, body = get(admin, "/metrics")
            assert status == 200
            assert b"\nclawproxy_draining 1\n" in body
            cut = read_until_closed(long_stream)
            assert b"shutting down" in cut
            assert b"[DONE]" not in cut
            stopping.result(5)
        finally:
            long_stream.close()
            kept.close()
        # Closed at the very end of stop().
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", admin), timeout=1).close()
    lines = [r.getMessage() for r in caplog.records if r.name == "clawproxy.access"]
    chat = [line for line in lines if "/v1/chat/completions" in line]
    assert len(chat) == 1, lines
    assert " 200 " in chat[0] and "outcome=shutting_down" in chat[0], chat[0]


def test_admin_connections_never_hold_the_drain() -> None:
    """A half-sent admin request or an idle admin keep-alive does not make stop() wait out
    the drain deadline: only the public port's requests are waited for."""
    with Harness() as h:
        admin = h.gateway.admin_port
        idle = http.client.HTTPConnection("127.0.0.1", admin, timeout=5)
        assert get(admin, "/metrics", idle)[0] == 200
        half = socket.create_connection(("127.0.0.1", admin), timeout=5)
        half.sendall(b"GET /health HTTP/1.1\r\nHost: localhost\r\n")
        state = h.gateway.state
        assert h.call(lambda: h.wait_until(lambda: state.connections == 2))
        started = time.monotonic()
        try:
            h.call(lambda: h.gateway.stop(drain_timeout=5.0))
            assert time.monotonic() - started < 2.5
            assert read_until_closed(half) == b""
        finally:
            half.close()
            idle.close()
