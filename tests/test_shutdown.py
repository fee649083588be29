"""Graceful shutdown (RELIABILITY checklist 46): drain, then cut what is left, clearly."""

from __future__ import annotations

import asyncio
import json
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


def test_drain_finishes_short_streams_and_cuts_long_ones_clearly() -> None:
    settings = {"gateway.max_concurrent": 2, "gateway.queue_size": 1}
    with Harness(settings, sim_options={"token_rate": 20.0}) as h:
        replies = {"short": Reply(tokens=[" s"] * 4), "long": Reply(tokens=[" l"] * 200)}
        h.sim.script = lambda req: replies[req["messages"][0]["content"]]

        def stream(kind: str) -> socket.socket:
            body = json.dumps({"messages": [{"role": "user", "content": kind}], "stream": True})
            sock = socket.create_connection(("127.0.0.1", h.port), timeout=5)
            sock.sendall(
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                % (len(body), body.encode())
            )
            return sock

        long_stream = stream("long")
        short_stream = stream("short")
        assert b"data: {" in read_some(long_stream, b"data: {")
        assert b"data: {" in read_some(short_stream, b"data: {")
        queued = stream("short")
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
