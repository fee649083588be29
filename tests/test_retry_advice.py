"""Retry advice on errors: ``x-should-retry: false`` where no retry can help.

The official clients retry 408, 409, 429 and every 5xx twice by default; a 502 from a
refused Ollama made each of them ask a failing Ollama three times (issue: first hour).
Errors a retry cannot fix say so; a full queue keeps ``Retry-After`` and no advice.
"""

from __future__ import annotations

import socket

import openai
import pytest
from harness import HELLO, Harness, open_stream, post_json, request

from clawproxy.errors import RETRYABLE_STATUSES, retry_headers


def chat_requests(h: Harness) -> int:
    return h.read(
        lambda: sum(
            n
            for (endpoint, _, _), n in h.gateway.state.requests.items()
            if endpoint == "/v1/chat/completions"
        )
    )


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 413, 415, 421, 500, 501, 502])
def test_statuses_no_retry_can_fix_carry_the_advice(status: int) -> None:
    assert retry_headers(status) == ((b"x-should-retry", b"false"),)


@pytest.mark.parametrize("status", sorted(RETRYABLE_STATUSES))
def test_statuses_worth_retrying_carry_none(status: int) -> None:
    assert retry_headers(status) == ()


def test_a_refused_ollama_and_a_bad_path_say_do_not_retry() -> None:
    with Harness(start_simulator=False) as h:
        status, headers, _ = post_json(h, "/v1/chat/completions", {**HELLO, "model": "m"})
        assert status == 502
        assert headers["x-should-retry"] == "false"
        status, headers, _ = request(h, "GET", "/v1/nope")
        assert status == 404
        assert headers["x-should-retry"] == "false"


def test_a_full_queue_keeps_retry_after_and_no_advice() -> None:
    with Harness({"gateway.max_concurrent": 1, "gateway.queue_size": 0}) as h:
        held = open_stream(h)
        try:
            held.recv(1)  # the stream's head: its slot is taken
            status, headers, _ = post_json(h, "/v1/chat/completions", HELLO)
        finally:
            held.close()
        assert status == 503
        assert headers["retry-after"] == "1"
        assert "x-should-retry" not in headers


def test_a_refused_ollama_is_asked_once_by_the_official_client() -> None:
    with Harness(start_simulator=False) as h:
        # The client's default retries (2), as a user's code has them.
        client = openai.OpenAI(base_url=h.base_url + "/v1", api_key="unused", timeout=20)
        with client, pytest.raises(openai.APIStatusError) as caught:
            client.chat.completions.create(
                model="qwen3:32b", messages=[{"role": "user", "content": "hi"}]
            )
        assert caught.value.status_code == 502
        assert chat_requests(h) == 1


def test_a_raw_refusal_carries_the_advice() -> None:
    with Harness() as h, socket.create_connection(("127.0.0.1", h.port), timeout=10) as sock:
        sock.sendall(
            b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
        head = reply.partition(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 400 ")
        assert b"\r\nx-should-retry: false\r\n" in head
