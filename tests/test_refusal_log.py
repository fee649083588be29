"""Refusals leave a trace: every request refused before a handler runs (400 framing, 408,
413, 414, 431, 501, 505, and the 503 for too many connections) writes an access line that
parses like a request's, with the reason as its outcome, and a flood of them is bounded."""

from __future__ import annotations

import logging
import re
import socket
import time
from collections.abc import Iterator

import pytest
from harness import Harness, read_until_closed, request, status_of

from clawproxy.telemetry.logs import REFUSAL_LINES_PER_S

# One access line, a request's or a refusal's: the same fields in the same order.
ACCESS_RE = re.compile(
    r'^(?P<client>\S+) "(?P<method>\S+) (?P<path>\S+)" (?P<status>\d{3}) model=(?P<model>\S+) '
    r"ttft_ms=(?P<ttft>[\d.]+|-) duration_ms=(?P<duration>[\d.]+|-) tokens=(?P<tokens>\d+) "
    r"outcome=(?P<outcome>\S+) key=(?P<key>\S+) node=(?P<node>\S+) rid=(?P<rid>\S+)$"
)
CANARY = b"sk-CANARY-7f3a"
SUPPRESSED_RE = re.compile(r"^(\d+) more refusals suppressed")


@pytest.fixture
def gw(loop_kind: str, caplog: pytest.LogCaptureFixture) -> Iterator[Harness]:
    caplog.set_level(logging.INFO)
    settings = {"server.header_timeout": "300ms", "server.max_connections": 6}
    with Harness({**settings, "gpu.enabled": False}, loop_kind=loop_kind) as harness:
        yield harness


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, str]]:
    """The INFO access lines so far, parsed (each must parse)."""
    parsed = []
    for record in caplog.records:
        if record.name == "clawproxy.access" and record.levelno == logging.INFO:
            found = ACCESS_RE.match(record.getMessage())
            assert found, record.getMessage()
            parsed.append(found.groupdict())
    return parsed


def lines_for(caplog: pytest.LogCaptureFixture, outcome: str) -> list[dict[str, str]]:
    """The access lines with ``outcome``, once there is one: the loop thread may write it a
    moment after the client has read the reply."""
    deadline = time.monotonic() + 5
    while True:
        matching = [line for line in access_lines(caplog) if line["outcome"] == outcome]
        if matching or time.monotonic() > deadline:
            return matching
        time.sleep(0.01)


def refusal_for(caplog: pytest.LogCaptureFixture, outcome: str) -> dict[str, str]:
    matching = lines_for(caplog, outcome)
    assert len(matching) == 1, access_lines(caplog)
    return matching[0]


def exchange(h: Harness, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", h.port), timeout=5) as sock:
        sock.sendall(raw)
        return read_until_closed(sock)


AUTH = b"Authorization: Bearer " + CANARY + b"\r\n"
# (raw request, status, outcome, method and path in the line: "-" when not known).
REFUSED = [
    (
        b"POST /v1/chat/completions?k=" + CANARY + b" HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        400, "bad_framing", "POST", "/v1/chat/completions",
    ),
    (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n" + AUTH
        + b"Content-Length: 99999999\r\n\r\n",
        413, "request_too_large", "POST", "/v1/chat/completions",
    ),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "request_line_too_long",
     "GET", "/" + "a" * 199 + "..."),
    (b"GET /health HTTP/1.1\r\nHost: x\r\n" + AUTH * 100 + b"\r\n", 431, "too_many_headers", "GET",
     "/health"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n", 501,
     "bad_request", "-", "-"),
    (b"GET /health HTTP/1.1\r\nbroken " + CANARY + b"\r\n\r\n", 400, "bad_request", "-", "-"),
    (b"GET /health HTTP/2.0\r\nHost: x\r\n\r\n", 505, "http_version", "GET", "/health"),
]  # fmt: skip


@pytest.mark.parametrize(("raw", "status", "outcome", "method", "path"), REFUSED)
def test_each_refusal_writes_one_access_line(
    gw: Harness,
    caplog: pytest.LogCaptureFixture,
    raw: bytes,
    status: int,
    outcome: str,
    method: str,
    path: str,
) -> None:
    assert status_of(exchange(gw, raw)) == status
    line = refusal_for(caplog, outcome)
    assert (line["method"], line["path"], line["status"]) == (method, path, str(status))
    assert line["client"] == "127.0.0.1"
    assert (line["model"], line["ttft"], line["tokens"], line["key"]) == ("-", "-", "0", "-")
    # Never a header value, never the query string, never the request's bytes.
    assert not any(CANARY.decode() in r.getMessage() for r in caplog.records)


def test_a_head_that_never_completes_is_logged_as_408(
    gw: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    assert status_of(exchange(gw, b"GET /health HTTP/1.1\r\nHost: x\r\n")) == 408
    line = refusal_for(caplog, "header_timeout")
    assert (line["method"], line["path"], line["status"]) == ("-", "-", "408")


def test_a_body_that_never_completes_is_logged_as_408_with_its_path(
    loop_kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with Harness({"server.body_timeout": "300ms"}, loop_kind=loop_kind) as h:
        raw = b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n{"
        assert status_of(exchange(h, raw)) == 408
    line = refusal_for(caplog, "body_timeout")
    assert (line["method"], line["path"]) == ("POST", "/v1/chat/completions")


def test_too_many_connections_is_logged(gw: Harness, caplog: pytest.LogCaptureFixture) -> None:
    idle = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(6)]
    try:
        assert gw.call(lambda: gw.wait_until(lambda: gw.gateway.state.connections == 6))
        assert status_of(exchange(gw, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")) == 503
    finally:
        for sock in idle:
            sock.close()
    line = refusal_for(caplog, "too_many_connections")
    assert (line["method"], line["path"], line["status"]) == ("-", "-", "503")


def test_requests_keep_their_access_line_format(
    gw: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    assert request(gw, "GET", "/health?x=1")[0] == 200
    (line,) = lines_for(caplog, "ok")
    assert (line["method"], line["path"], line["status"], line["outcome"]) == (
        "GET",
        "/health",
        "200",
        "ok",
    )
    assert line["duration"] != "-"


def test_a_refusal_flood_writes_a_bounded_number_of_lines(
    gw: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    flood = 5 * REFUSAL_LINES_PER_S
    for _ in range(flood):
        assert status_of(exchange(gw, b"GET /health HTTP/9.0\r\nHost: x\r\n\r\n")) == 505
    # The count of what was held back arrives once its second has closed.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        told = [
            int(m[1])
            for r in caplog.records
            if r.name == "clawproxy.access" and (m := SUPPRESSED_RE.match(r.getMessage()))
        ]
        written = [line for line in access_lines(caplog) if line["outcome"] == "http_version"]
        if len(written) + sum(told) == flood:
            break
        time.sleep(0.05)
    assert len(written) + sum(told) == flood, (len(written), told)
    assert told, "no summary line"
    # Within any one second, at most REFUSAL_LINES_PER_S lines: the flood took a few.
    seconds = max(1, len(told))
    assert len(written) <= REFUSAL_LINES_PER_S * (seconds + 1)
