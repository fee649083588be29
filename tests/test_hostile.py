"""Hostile clients: JSON bombs, slow bodies, floods, and a fuzzer for the request parser."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import cast

import pytest
from harness import (
    FakeTransport,
    Harness,
    connect,
    offline_gateway,
    post_json,
    read_until_closed,
    status_of,
    trickle,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from clawproxy.gateway import Gateway
from clawproxy.http.server import HttpConnection

CHAT = "/v1/chat/completions"


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000 + b"]" * 100_000,  # depth bomb
        b'{"messages": [{"role": "user", "content": "x"}], "seed": 1' + b"0" * 5000 + b"}",
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
        b'{"messages": [{"role": "user", "content": "x"}], "temperature": Infinity}',
        b'{"messages": [{"role": "user", "content": "\\ud800"}]}',  # lone surrogate
        b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',  # invalid UTF-8
        b'{"messages": [{"role": "user", "content": "x"}], "n": 4}',
        b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 1000000000}',
        b'{"messages": []}',
        json.dumps({"messages": [{"role": "user", "content": "x"}] * 10_000}).encode(),
        b"[]",
        b"null",
        b"",
    ],
    ids=[
        "deep",
        "huge_int",
        "nan",
        "infinity",
        "lone_surrogate",
        "invalid_utf8",
        "n4",
        "max_tokens",
        "no_messages",
        "too_many_messages",
        "array",
        "null",
        "empty",
    ],
)
def test_json_bombs_are_clear_400s(gw: Harness, body: bytes) -> None:
    status, _, reply = post_json(gw, CHAT, body)
    assert status == 400
    err = json.loads(reply)["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    assert all(r.path != "/api/chat" for r in gw.sim.requests)


def test_duplicate_keys_resolve_as_forwarded(gw: Harness) -> None:
    body = b'{"model": "nosuch:x", "model": "qwen3:32b", "messages": []}'.replace(
        b"[]", b'[{"role": "user", "content": "x"}]'
    )
    status, _, _ = post_json(gw, CHAT, body)
    assert status == 200
    # The checked value is the one forwarded: the payload is rebuilt, never passed raw.
    assert gw.sim.requests[-1].json["model"] == "qwen3:32b"


def test_client_knobs_never_reach_ollama(gw: Harness) -> None:
    body = {
        "messages": [{"role": "user", "content": "x"}],
        "keep_alive": 0,
        "options": {"num_ctx": 1_048_576, "num_gpu": 99},
        "num_ctx": 1_048_576,
        "api_base": "http://169.254.169.254/",
        "format": "json",
        "think": True,
    }
    assert post_json(gw, CHAT, body)[0] == 200
    sent = gw.sim.requests[-1].json
    assert "keep_alive" not in sent
    assert sent["options"]["num_ctx"] == 4096
    assert "num_gpu" not in sent["options"]
    assert "format" not in sent and "think" not in sent and "api_base" not in sent


def test_slow_body_is_cut_at_the_body_deadline_without_taking_a_slot() -> None:
    with Harness({"server.body_timeout": "300ms"}) as h, connect(h) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
        )
        started = time.monotonic()

        def no_slot_taken() -> None:
            assert h.read(lambda: h.gateway.state.admission.active) == 0

        data = trickle(sock, b"x", no_slot_taken)
        assert status_of(data) == 408
        assert time.monotonic() - started < 3
        assert h.read(lambda: h.gateway.state.admission.admitted) == 0


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_flood_behind_a_request_does_not_grow_memory(gw: Harness) -> None:
    from clawproxy.simulator import Reply

    gw.sim.token_rate = 20.0
    gw.sim.next_reply(Reply(tokens=["x"] * 40))
    body = json.dumps({"messages": [{"role": "user", "content": "x"}], "stream": True}).encode()
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
    before = rss_kib()
    with connect(gw) as sock:
        sock.sendall(head % len(body) + body)
        sock.setblocking(False)
        garbage = b"G" * 65536
        sent, blocked = 0, 0
        # Push garbage without reading until the socket will take no more.
        while blocked < 20 and sent < 64 << 20:
            try:
                sent += sock.send(garbage)
                blocked = 0
            except BlockingIOError:
                blocked += 1
                time.sleep(0.005)

        def paused() -> bool:
            return any(c._reading_paused for c in gw.gateway.connections.live())

        # The gateway stopped reading at 64 KiB; the rest sits in kernel buffers.
        assert gw.read(paused)
        assert sent < 64 << 20
        assert rss_kib() - before < 16 * 1024
        sock.setblocking(True)
        data = read_until_closed(sock)
    assert status_of(data) == 200
    assert b"data: [DONE]" in data
    assert gw.settled()


# -- fuzzing the request parser in-process -------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_gateway() -> Iterator[tuple[asyncio.AbstractEventLoop, Gateway]]:
    with offline_gateway({"server.max_body_bytes": 4096}) as made:
        yield made


PREFIXES = [
    b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"GET / HTTP/1.0\r\n",
    b"",
]


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.sampled_from(PREFIXES),
    noise=st.binary(max_size=300),
    cut=st.integers(min_value=1, max_value=64),
)
def test_fuzzed_requests_parse_or_get_a_4xx(
    fuzz_gateway: tuple[asyncio.AbstractEventLoop, Gateway], prefix: bytes, noise: bytes, cut: int
) -> None:
    loop, gw = fuzz_gateway
    transport = FakeTransport()
    conn = HttpConnection(gw.connections, gw.public)
    errors: list[BaseException] = []

    async def drive() -> None:
        conn.connection_made(cast(asyncio.Transport, transport))
        data = prefix + noise
        for i in range(0, len(data), cut):
            conn.data_received(data[i : i + cut])
        # Let any handler task run (upstream is unreachable: a 502 at worst).
        for _ in range(50):
            await asyncio.sleep(0)
        conn.connection_lost(None)
        await asyncio.sleep(0)

    loop.set_exception_handler(
        lambda _loop, ctx: errors.append(ctx.get("exception") or RuntimeError(ctx["message"]))
    )
    loop.run_until_complete(drive())
    assert not errors
    for status in [int(m) for m in _statuses(bytes(transport.written))]:
        assert status != 500, transport.written[:300]


def _statuses(data: bytes) -> list[bytes]:
    import re

    return re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
