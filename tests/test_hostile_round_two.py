"""Hostile clients, round two: what an independent attack on the landed gateway found.

Raw sockets over loopback, because these bugs live at that level: a disconnect hidden
behind pipelined bytes, a parser message that echoed the request's bytes back.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import struct
import time

import pytest
from harness import Harness, connect, read_until_closed, status_of

from clawproxy.simulator import Reply

CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"


def chat_request(stream: bool) -> bytes:
    body = json.dumps(
        {"model": "qwen3:32b", "messages": [{"role": "user", "content": "x"}], "stream": stream}
    ).encode()
    return CHAT + b"Content-Length: %d\r\n\r\n" % len(body) + body


def slots_become(h: Harness, count: int, timeout: float) -> bool:
    admission = h.gateway.state.admission
    return h.call(lambda: h.wait_until(lambda: admission.active == count, timeout))


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_a_client_gone_behind_a_long_pipeline_frees_its_slot_at_once(gw: Harness, how: str) -> None:
    """A non-streaming request, then >64 KiB of pipelined requests in the same write, then
    the socket closed: the slot must come back within a second, not after the generation
    (20 s here), and the request is logged as the client's abort, not 200."""
    gw.sim.token_rate = 2.0
    gw.sim.next_reply(Reply(tokens=["x"] * 40))
    pipelined = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 3000  # ~100 KiB
    sock = connect(gw)
    sock.sendall(chat_request(stream=False) + pipelined)
    assert slots_become(gw, 1, 5.0)
    if how == "rst":
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
    started = time.monotonic()
    assert slots_become(gw, 0, 5.0)
    assert time.monotonic() - started < 1.0
    recent = gw.read(lambda: list(gw.gateway.state.recent))
    chats = [r for r in recent if r.get("endpoint") == "/v1/chat/completions"]
    assert chats and chats[-1]["status"] == 499


def test_a_pipeline_within_the_limit_is_still_served_in_order(gw: Harness) -> None:
    with connect(gw) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_until_closed(sock)
    assert data.count(b"HTTP/1.1 200 OK\r\n") == 4


SECRET = b"sk-live-SECRET"


@pytest.mark.parametrize(
    "bad_line",
    [
        b"Authorization: Bearer " + SECRET + b"\x00",
        b"Authorization : Bearer " + SECRET,
        b"Authorization Bearer " + SECRET,
    ],
)
def test_a_malformed_header_is_never_echoed(
    gw: Harness, bad_line: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="clawproxy")
    with connect(gw) as sock:
        sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n" + bad_line + b"\r\n\r\n")
        data = read_until_closed(sock)
    assert status_of(data) == 400
    assert SECRET not in data
    assert b"illegal header line" in data  # what was wrong, not what was sent
    assert SECRET.decode() not in caplog.text


def test_a_malformed_request_line_is_never_echoed(gw: Harness) -> None:
    with connect(gw) as sock:
        sock.sendall(b"GET /?key=" + SECRET + b"\x00 HTTP/1.1\r\nHost: x\r\n\r\n")
        data = read_until_closed(sock)
    assert status_of(data) == 400
    assert SECRET not in data


# -- framing h11 tolerates, versions it reads, interim and HEAD responses ----------------


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"X-A: a\r\n\tb\r\nContent-Length: 0\r\n\r\n",
    ],
)
def test_a_folded_header_line_is_refused(gw: Harness, head: bytes) -> None:
    with connect(gw) as sock:
        sock.sendall(head + b"0\r\n\r\n")
        data = read_until_closed(sock)
    assert status_of(data) == 400
    assert b"bad_framing" in data


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/3.1"])
def test_versions_other_than_1_0_and_1_1_get_505(gw: Harness, version: bytes) -> None:
    with connect(gw) as sock:
        sock.sendall(b"GET /health " + version + b"\r\nHost: x\r\n\r\n")
        data = read_until_closed(sock)
    assert status_of(data) == 505


def test_expect_100_continue_within_limits_gets_its_interim_response(gw: Harness) -> None:
    body = json.dumps({"model": "qwen3:32b", "messages": [{"role": "user", "content": "x"}]})
    with connect(gw) as sock:
        sock.sendall(
            CHAT + b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body.encode())
        )
        # The client waits for this before sending its body (curl waits 1 s, others more).
        interim = sock.recv(64)
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body.encode())
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536)
    assert status_of(data) == 200


def test_expect_100_continue_over_the_body_limit_gets_413_and_no_100(gw: Harness) -> None:
    with connect(gw) as sock:
        sock.sendall(CHAT + b"Expect: 100-continue\r\nContent-Length: 99999999\r\n\r\n")
        data = read_until_closed(sock)
    assert status_of(data) == 413
    assert b"100 Continue" not in data


def test_head_on_a_get_route_is_answered_like_get_without_a_body(gw: Harness) -> None:
    with connect(gw) as sock:
        sock.sendall(b"HEAD /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = read_until_closed(sock)
    head, _, rest = data.partition(b"\r\n\r\n")
    assert status_of(data) == 200
    assert b"content-length: " in head.lower()
    assert rest == b""


def test_a_folded_header_line_sent_byte_by_byte_is_refused(gw: Harness) -> None:
    head = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        b"Transfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n"
    )
    with connect(gw) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # The refusal may close the socket before the body's last bytes are sent.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            for i in range(len(head)):
                sock.sendall(head[i : i + 1])
        data = read_until_closed(sock)
    assert status_of(data) == 400
    assert b"bad_framing" in data
