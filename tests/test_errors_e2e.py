"""Every error a client can meet, through the official client and plain HTTP."""

from __future__ import annotations

import json
import time
from typing import Any

import openai
import pytest
from harness import HELLO, Harness, ask, client, content_of, error_of, post_json, request

from clawproxy.simulator import Fault, Reply

CHAT = "/v1/chat/completions"


def test_invalid_json_is_400(gw: Harness) -> None:
    status, headers, body = post_json(gw, CHAT, b'{"messages": [')
    assert status == 400
    assert headers["content-type"] == "application/json"
    err = error_of(body)
    assert err["type"] == "invalid_request_error"
    assert "not valid JSON" in err["message"]


def test_missing_and_ill_typed_fields_name_the_field(gw: Harness) -> None:
    status, _, body = post_json(gw, CHAT, {"model": "qwen3:32b"})
    assert status == 400
    assert error_of(body)["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, temperature=9)
    assert info.value.status_code == 400
    assert info.value.body["param"] == "temperature"  # type: ignore[index]


def test_things_ollama_cannot_do_are_refused(gw: Harness) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        ask(gw, n=2)
    assert "n must be 1" in info.value.message
    assert all(r.path != "/api/chat" for r in gw.sim.requests)


def test_unknown_model_is_404_with_ollamas_message(gw: Harness) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        ask(gw, model="nosuch:latest")
    assert info.value.status_code == 404
    assert "nosuch" in info.value.message
    assert info.value.body["code"] == "model_not_found"  # type: ignore[index]


def test_ollama_down_is_502_fast() -> None:
    with Harness(start_simulator=False) as h:
        started = time.monotonic()
        for stream in (False, True):
            with pytest.raises(openai.InternalServerError) as info:
                ask(h, stream=stream)
            assert info.value.status_code == 502
        assert time.monotonic() - started < 3
        status, _, body = request(h, "GET", "/v1/models")
        assert status == 502
        assert error_of(body)["code"] == "upstream_unavailable"
        assert h.settled()


def test_ollama_silent_is_504_at_the_deadline() -> None:
    with Harness({"server.timeout": "300ms"}) as h:
        h.sim.next_reply(Reply(tokens=["x"], fault=Fault(blackhole=True)))
        started = time.monotonic()
        status, _, body = post_json(h, CHAT, HELLO)
        elapsed = time.monotonic() - started
        assert status == 504
        assert error_of(body)["code"] == "upstream_timeout"
        assert 0.25 < elapsed < 3
        assert h.settled()


def test_upstream_html_error_is_502_and_never_reflected(gw: Harness) -> None:
    page = b"<html><body>secret internal page</body></html>"
    gw.sim.next_reply(Reply(fault=Fault(status=500, body=page, content_type="text/html")))
    status, _, body = post_json(gw, CHAT, HELLO)
    assert status == 502
    assert b"secret" not in body and b"<html" not in body
    assert "HTTP 500" in error_of(body)["message"]


def test_upstream_json_error_passes_its_message(gw: Harness) -> None:
    gw.sim.next_reply(Reply(fault=Fault(status=500, body=b'{"error":"out of memory"}')))
    status, _, body = post_json(gw, CHAT, HELLO)
    assert status == 502
    assert "out of memory" in error_of(body)["message"]


@pytest.mark.parametrize(
    "fault",
    [
        Fault(error_line_after=3),
        Fault(reset_after=3),
        Fault(truncate_chunked=3),
        Fault(eof_no_done=True),
        Fault(giant_line=3 << 20),
    ],
    ids=["error_line", "reset", "truncated", "eof_no_done", "giant_line"],
)
def test_failure_mid_stream_is_an_error_event_without_done(gw: Harness, fault: Fault) -> None:
    gw.sim.next_reply(Reply(tokens=["a", "b", "c", "d", "e"], fault=fault))
    received: list[Any] = []
    with pytest.raises(openai.APIError) as info:
        for chunk in ask(gw, stream=True):
            received.append(chunk)
    assert not isinstance(info.value, openai.APIConnectionError)
    assert "abcde".startswith(content_of(received))
    assert all(c.choices[0].finish_reason is None for c in received if c.choices)
    if fault.error_line_after:
        assert "error was encountered while running the model" in info.value.message
    # Counted once as an upstream error, whatever the read boundaries were.
    assert sum(gw.read(lambda: dict(gw.gateway.state.upstream_errors)).values()) == 1


def test_cut_stream_has_no_done_and_no_final_chunk(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["a", "b", "c"], fault=Fault(reset_after=2)))
    status, _, body = raw_stream(gw)
    assert status == 200
    assert b"data: [DONE]" not in body
    assert b'"error"' in body
    assert not body.endswith(b"0\r\n\r\n")


def raw_stream(gw: Harness) -> tuple[int, dict[str, str], bytes]:
    """Read a streamed reply's raw chunked bytes until the server closes."""
    import socket

    payload = json.dumps({**HELLO, "stream": True}).encode()
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(payload), payload)
        )
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def test_unknown_path_is_404_and_wrong_method_405(gw: Harness) -> None:
    for path in ("/nope", "/api/pull", "/api/tags", "/v1/chat/completions/", "/v1/../api/tags"):
        status, _, body = request(gw, "GET", path)
        assert status == 404, path
        assert error_of(body)["type"] == "not_found_error"
    status, headers, body = request(gw, "GET", CHAT)
    assert status == 405
    assert headers["allow"] == "POST"
    assert error_of(body)["code"] == "method_not_allowed"
    assert all(r.path not in ("/api/pull", "/api/tags") for r in gw.sim.requests)


def test_health_answers_without_asking_ollama(gw: Harness) -> None:
    status, _, body = request(gw, "GET", "/health")
    assert status == 200
    health = json.loads(body)
    assert health["status"] == "ok"
    assert health["model"] == "qwen3:32b"
    assert isinstance(health["uptime_seconds"], int)
    # Lazy: nothing at all was asked of Ollama, not even a connection.
    assert len(gw.sim.requests) == 0
    assert gw.read(lambda: gw.gateway.pool.connects) == 0


def test_gateway_starts_and_serves_health_with_ollama_down() -> None:
    with Harness(start_simulator=False) as h:
        status, _, body = request(h, "GET", "/health")
        assert status == 200
        assert json.loads(body)["status"] == "ok"


def test_client_still_works_after_errors(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["a"], fault=Fault(reset_after=0)))
    with pytest.raises(openai.APIError):
        list(ask(gw, stream=True))
    gw.sim.next_reply(Reply(tokens=["fine"]))
    assert client(gw).chat.completions.create(model="qwen3:32b", messages=HELLO["messages"])
