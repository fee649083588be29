"""The HTTP/1.1 server seen from raw sockets: framing, limits, deadlines, keep-alive."""

from __future__ import annotations

import http.client
import json
import re
import time

import h11
import pytest
from harness import Harness, connect, read_until_closed, status_of, trickle

from clawproxy.http.parsers import SPARE_PARSERS, ParserStock
from clawproxy.simulator import Reply

BODY = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()


def exchange(h: Harness, raw: bytes) -> bytes:
    with connect(h) as sock:
        sock.sendall(raw)
        return read_until_closed(sock)


def chat_post(body: bytes = BODY, extra: bytes = b"") -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)
    )


def test_many_requests_on_one_keep_alive_connection(gw: Harness) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=10)
    for n in range(20):
        gw.sim.next_reply(Reply(tokens=[f"reply {n}"]))
        conn.request("POST", "/v1/chat/completions", body=BODY)
        resp = conn.getresponse()
        assert resp.status == 200
        assert json.loads(resp.read())["choices"][0]["message"]["content"] == f"reply {n}"
    conn.close()
    # One client connection and one upstream connection served all twenty.
    assert gw.read(lambda: gw.gateway.pool.connects) == 1
    assert len({r.connection_id for r in gw.sim.requests}) == 1


def test_pipelined_requests_are_answered_in_order(gw: Harness) -> None:
    raw = (
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /nope HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = exchange(gw, raw)
    statuses = [int(code) for code in re.findall(rb"HTTP/1\.1 (\d{3}) ", data)]
    assert statuses == [200, 404, 200]


def test_chunked_request_body_is_accepted(gw: Harness) -> None:
    head = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    half = len(BODY) // 2
    body = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, BODY[:half], len(BODY) - half, BODY[half:])
    data = exchange(gw, head + b"Connection: close\r\n\r\n" + body)
    assert status_of(data) == 200
    assert b'"chat.completion"' in data


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (chat_post(extra=b"Transfer-Encoding: chunked\r\n"), 400),  # CL + TE: smuggling
        (b"POST /v1/chat/completions HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
        (b"GET http://127.0.0.1:11434/api/tags HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"CONNECT 127.0.0.1:11434 HTTP/1.1\r\nHost: x\r\n\r\n", 405),
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET /health HTTP/1.1\r\n\r\n", 400),  # no Host in HTTP/1.1
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414),
        (b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431),
        (b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"X-A: b\r\n" * 150 + b"\r\n", 431),
    ],
    ids=[
        "cl_and_te",
        "chunked_http10",
        "absolute_form",
        "connect",
        "asterisk",
        "space_before_colon",
        "no_host",
        "negative_length",
        "unknown_te",
        "long_request_line",
        "header_bomb_one_write",
        "too_many_headers",
    ],
)
def test_bad_framing_is_refused_and_closed(gw: Harness, raw: bytes, status: int) -> None:
    data = exchange(gw, raw)
    assert status_of(data) == status
    assert b"connection: close" in data.lower()
    body = json.loads(data.partition(b"\r\n\r\n")[2])
    assert body["error"]["message"]
    # Nothing reached Ollama.
    assert len(gw.sim.requests) == 0


def test_oversized_body_is_refused_before_it_is_read() -> None:
    with Harness({"server.max_body_bytes": 1000}) as h, connect(h) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 2000000000\r\n"
            b"Expect: 100-continue\r\n\r\n"
        )
        data = read_until_closed(sock)
        assert status_of(data) == 413
        assert b"100 Continue" not in data
        assert len(h.sim.requests) == 0


def test_chunked_body_over_the_limit_is_413() -> None:
    with Harness({"server.max_body_bytes": 1000}) as h:
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        chunks = b"200\r\n" + b"a" * 0x200 + b"\r\n"
        data = exchange(h, head + chunks * 3)
        assert status_of(data) == 413


def test_idle_keep_alive_connection_is_closed() -> None:
    with Harness({"server.keepalive_timeout": "200ms"}) as h, connect(h) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        started = time.monotonic()
        data = read_until_closed(sock)
        assert status_of(data) == 200
        assert 0.15 < time.monotonic() - started < 5


def test_slow_head_is_cut_at_the_absolute_deadline() -> None:
    with Harness({"server.header_timeout": "300ms"}) as h, connect(h) as sock:
        started = time.monotonic()
        sock.sendall(b"GET /health HTTP/1.1\r\n")
        # Keep trickling header bytes: an idle timer would be reset, a deadline is not.
        data = trickle(sock, b"X-Slow: 1\r\n")
        assert status_of(data) == 408
        assert time.monotonic() - started < 3


def test_silent_connection_is_closed_at_the_header_deadline() -> None:
    with Harness({"server.header_timeout": "200ms"}) as h, connect(h) as sock:
        assert read_until_closed(sock) == b""
        assert h.settled()
        assert h.read(lambda: h.gateway.state.connections) == 0


def test_last_request_on_a_connection_says_close() -> None:
    with Harness({"server.max_requests_per_connection": 2}) as h, connect(h) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n" * 3)
        data = read_until_closed(sock)
        heads = re.findall(rb"HTTP/1\.1 [^\n]*\r\n(?:[^\r]+\r\n)*\r\n", data)
        assert len(heads) == 2
        assert b"connection: close" not in heads[0].lower()
        assert b"connection: close" in heads[1].lower()


def test_http10_client_gets_a_close_delimited_stream(gw: Harness) -> None:
    payload = json.dumps({"messages": [{"role": "user", "content": "hi"}], "stream": True})
    gw.sim.next_reply(Reply(tokens=["x", "y"]))
    raw = b"POST /v1/chat/completions HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (
        len(payload),
        payload.encode(),
    )
    data = exchange(gw, raw)
    head, _, body = data.partition(b"\r\n\r\n")
    assert status_of(head) == 200
    assert b"transfer-encoding" not in head.lower()
    assert body.startswith(b"data: ") and body.endswith(b"data: [DONE]\n\n")


def test_too_many_connections_are_refused_cleanly() -> None:
    with Harness({"server.max_connections": 2}) as h:
        first, second = connect(h), connect(h)
        try:
            h.call(lambda: h.wait_until(lambda: h.gateway.state.connections == 2))
            data = exchange(h, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert status_of(data) == 503
            assert h.read(lambda: h.gateway.state.refused["too_many_connections"]) == 1
        finally:
            first.close()
            second.close()


def test_cors_preflight_from_a_foreign_origin_gets_no_cors_grant(gw: Harness) -> None:
    raw = (
        b"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: x\r\nOrigin: http://evil.example\r\n"
        b"Access-Control-Request-Method: POST\r\nConnection: close\r\n\r\n"
    )
    data = exchange(gw, raw)
    assert status_of(data) == 405
    assert b"access-control-allow-origin" not in data.lower()


def test_connection_close_ends_the_connection_after_one_response(gw: Harness) -> None:
    raw = (
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n"
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    data = exchange(gw, raw)
    assert len(re.findall(rb"HTTP/1\.1 200 ", data)) == 1
    assert b"connection: close" in data.lower()


def test_head_has_the_headers_and_no_body_and_keeps_the_connection(gw: Harness) -> None:
    raw = (
        b"HEAD /health HTTP/1.1\r\nHost: x\r\n\r\n"
        b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    data = exchange(gw, raw)
    first, _, rest = data.partition(b"\r\n\r\n")
    length = int(re.search(rb"content-length: (\d+)", first).group(1))  # type: ignore[union-attr]
    assert length > 0
    # No body after the HEAD response: the next bytes are the GET's status line.
    assert rest.startswith(b"HTTP/1.1 200 ")
    assert rest.endswith(b"}")


def test_parsers_for_new_connections_are_built_between_requests(gw: Harness) -> None:
    """New connections take a parser built after an earlier request (ParserStock); each is
    fresh, and the stock never grows past its size."""

    def stock() -> list[h11.Connection]:
        return list(gw.gateway.connections.parsers._spare)

    before = gw.read(stock)
    for _ in range(3):
        assert exchange(
            gw, b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ).startswith(b"HTTP/1.1 200")
    after = gw.read(stock)
    # Each request took one (if there was one) and put one back after it finished.
    assert 1 <= len(after) <= SPARE_PARSERS
    # The newest was built after these requests (the old ones are still alive: no id reuse).
    assert all(after[-1] is not old for old in before)
    assert all(p.their_state is h11.IDLE and p.our_state is h11.IDLE for p in after)


def test_a_parser_stock_builds_when_empty_and_keeps_its_size() -> None:
    stock = ParserStock(max_header_bytes=1024, keep=2)
    first = stock.take()
    assert first.our_role is h11.SERVER and first.their_state is h11.IDLE
    for _ in range(5):
        stock.refill()
    taken = [stock.take(), stock.take(), stock.take()]
    assert len({id(p) for p in [first, *taken]}) == 4
    # An oversized head is refused as the configured limit says.
    parser = stock.take()
    parser.receive_data(b"GET / HTTP/1.1\r\nX: " + b"a" * 2000)
    with pytest.raises(h11.RemoteProtocolError):
        parser.next_event()
