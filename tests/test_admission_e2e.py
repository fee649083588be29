"""Admission, cancellation and backpressure against a slowed-down simulator."""

from __future__ import annotations

import json
import socket
import threading
import time
from typing import Any

import openai
import pytest
from harness import Harness, client, open_stream, request

from clawproxy.simulator import Fault, Reply

HELLO = [{"role": "user", "content": "hi"}]


def test_burst_gets_whole_answers_or_fast_503s() -> None:
    settings = {"gateway.max_concurrent": 2, "gateway.queue_size": 3}
    # Long enough (0.75 s a stream) that all ten arrive while the first two still run.
    tokens = [f" t{n}" for n in range(30)]
    with Harness(settings, sim_options={"token_rate": 40.0}) as h:
        h.sim.script = lambda _request: Reply(tokens=tokens)
        start = threading.Barrier(10)
        results: list[tuple[str, float, Any]] = []
        lock = threading.Lock()

        def one() -> None:
            start.wait()
            try:
                text = "".join(
                    c.choices[0].delta.content or ""
                    for c in client(h).chat.completions.create(
                        model="qwen3:32b", messages=HELLO, stream=True
                    )
                    if c.choices
                )
                outcome: tuple[str, float, Any] = ("ok", time.monotonic(), text)
            except openai.APIStatusError as exc:
                outcome = ("refused", time.monotonic(), exc)
            with lock:
                results.append(outcome)

        threads = [threading.Thread(target=one) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        done = [r for r in results if r[0] == "ok"]
        refused = [r for r in results if r[0] == "refused"]
        assert len(done) == 5 and len(refused) == 5
        assert all(text == "".join(tokens) for _, _, text in done)
        for _, _, exc in refused:
            assert exc.status_code == 503
            assert exc.response.headers["retry-after"] == "1"
            assert exc.body["code"] == "queue_full"
        # Refused at once: every refusal came back before the first stream had finished.
        assert max(at for _, at, _ in refused) < min(at for _, at, _ in done)
        assert h.sim.max_active_streams == 2
        assert h.read(lambda: h.gateway.state.admission.rejected["queue_full"]) == 5
        assert h.settled()


def test_health_and_models_are_never_queued() -> None:
    settings = {"gateway.max_concurrent": 1, "gateway.queue_size": 0}
    with Harness(settings, sim_options={"token_rate": 20.0}) as h:
        h.sim.next_reply(Reply(tokens=["x"] * 100))
        sock = open_stream(h)
        try:
            assert sock.recv(1024).startswith(b"HTTP/1.1 200")
            assert request(h, "GET", "/health")[0] == 200
            assert request(h, "GET", "/v1/models")[0] == 200
            status, _, _ = request(
                h, "POST", "/v1/chat/completions", json.dumps({"messages": HELLO}).encode()
            )
            assert status == 503
        finally:
            sock.close()
        assert h.settled()


def test_queued_client_that_leaves_frees_its_place() -> None:
    settings = {"gateway.max_concurrent": 1, "gateway.queue_size": 1}
    with Harness(settings, sim_options={"token_rate": 50.0}) as h:
        adm = h.gateway.state.admission
        h.sim.next_reply(Reply(tokens=[" a"] * 15))
        first = open_stream(h)
        assert first.recv(1024).startswith(b"HTTP/1.1 200")
        leaver = open_stream(h)
        assert h.call(lambda: h.wait_until(lambda: adm.waiting == 1))
        leaver.close()
        assert h.call(lambda: h.wait_until(lambda: adm.waiting == 0))
        # The place is free: the next client queues instead of getting a 503, then runs.
        h.sim.next_reply(Reply(tokens=[" b"]))
        reply = client(h).chat.completions.create(model="qwen3:32b", messages=HELLO)
        assert reply.choices[0].message.content == " b"
        first.close()
        # Ollama saw the first and the last request, never the one that left.
        assert len([r for r in h.sim.requests if r.path == "/api/chat"]) == 2
        assert h.settled()


def test_queue_wait_timeout_is_503() -> None:
    settings = {
        "gateway.max_concurrent": 1,
        "gateway.queue_size": 1,
        "gateway.queue_timeout": "200ms",
    }
    with Harness(settings, sim_options={"token_rate": 20.0}) as h:
        h.sim.next_reply(Reply(tokens=[" a"] * 100))
        first = open_stream(h)
        try:
            assert first.recv(1024).startswith(b"HTTP/1.1 200")
            status, _, body = request(
                h, "POST", "/v1/chat/completions", json.dumps({"messages": HELLO}).encode()
            )
            assert status == 503
            assert json.loads(body)["error"]["code"] == "queue_timeout"
        finally:
            first.close()
        assert h.settled()


@pytest.mark.parametrize("stream", [True, False])
def test_client_leaving_mid_request_closes_the_upstream(gw: Harness, stream: bool) -> None:
    gw.sim.token_rate = 20.0
    gw.sim.next_reply(Reply(tokens=[" tok"] * 200))
    body = json.dumps({"messages": HELLO, "stream": stream}).encode()
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
        % (len(body), body)
    )
    assert gw.call(lambda: gw.wait_until(lambda: gw.sim.active_streams == 1))
    if stream:
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    sock.close()
    record = gw.sim.streams[-1]
    # Ollama's connection is closed within a second, so the GPU stops generating.
    outcome = gw.call(lambda: record.wait_ended(timeout=1.0))
    assert outcome == "client_closed"
    assert record.tokens_sent < 200
    assert gw.settled()
    # The abandoned connection was closed, not returned to the pool.
    assert gw.read(lambda: gw.gateway.pool.open_connections) == 0


def test_slow_reader_pauses_the_upstream_and_bounds_memory(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["x" * 200], fault=Fault(flood=True)))
    sock = open_stream(gw, rcvbuf=4096)
    try:

        def upstream_paused() -> bool:
            conns = gw.gateway.connections.live()
            return bool(conns) and conns[0].flow.client_paused

        assert gw.call(lambda: gw.wait_until(upstream_paused, timeout=10))
        written = gw.sim.streams[-1].bytes_written
        buffered = gw.read(
            lambda: gw.gateway.connections.live()[0].transport.get_write_buffer_size()
        )
        # Bounded by the high-water mark plus one upstream read, whatever the client does.
        assert buffered < 64 * 1024 + 256 * 1024
        gw.call(lambda: gw.wait_until(lambda: False, timeout=0.2))
        # While paused, Ollama's writes back up in TCP: it can only fill the socket buffers.
        assert gw.sim.streams[-1].bytes_written - written < 8 * 1024 * 1024
        # Reading again resumes the flow all the way to Ollama (within a bounded read).
        got = 0
        while gw.sim.streams[-1].bytes_written == written and got < 256 * 1024 * 1024:
            got += len(sock.recv(1024 * 1024))
        assert gw.sim.streams[-1].bytes_written > written
    finally:
        sock.close()
    assert gw.call(lambda: gw.sim.streams[-1].wait_ended(timeout=2.0)) == "client_closed"


def test_a_trickling_reader_stays_bounded_and_keeps_the_upstream_paused(gw: Harness) -> None:
    """A client reading one small piece at a time (here every 50 ms, scaled down from one a
    second): the gateway's buffer for it stays under the high-water mark plus one read,
    and Ollama's stream spends its time paused instead of filling the gateway's memory."""
    gw.sim.next_reply(Reply(tokens=["y" * 200], fault=Fault(flood=True)))
    sock = open_stream(gw, rcvbuf=4096)
    try:

        def server_side() -> Any:
            return gw.gateway.connections.live()[0]

        def paused() -> bool:
            conns = gw.gateway.connections.live()
            return bool(conns) and conns[0].flow.client_paused

        assert gw.call(lambda: gw.wait_until(paused, timeout=10))
        peak = 0
        for _ in range(10):
            assert len(sock.recv(1024)) > 0
            time.sleep(0.05)
            peak = max(peak, gw.read(lambda: server_side().transport.get_write_buffer_size()))
        assert peak < 64 * 1024 + 256 * 1024
        # Still paused: a kilobyte now and then never drains it below the low-water mark.
        assert gw.read(paused)
    finally:
        sock.close()
    assert gw.call(lambda: gw.sim.streams[-1].wait_ended(timeout=2.0)) == "client_closed"
