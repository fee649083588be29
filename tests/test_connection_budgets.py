"""Two connection budgets: ``server.max_connections`` for the public port and
``gateway.admin_max_connections`` for the admin port. A flood of idle sockets on one port
never takes the other's, so admin ``/health`` answers exactly when the public port is
flooded, and an admin flood cannot lock users out."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import pytest
from harness import Harness, read_until_closed, status_of

# Small budgets keep the floods short; the rule is the same at 400 and 16.
PUBLIC_BUDGET = 12
ADMIN_BUDGET = 4


@pytest.fixture
def gw(loop_kind: str) -> Iterator[Harness]:
    settings = {
        "server.max_connections": PUBLIC_BUDGET,
        "gateway.admin_max_connections": ADMIN_BUDGET,
        "gpu.enabled": False,
    }
    with Harness(settings, loop_kind=loop_kind) as harness:
        yield harness


def flood(port: int, count: int) -> list[socket.socket]:
    """``count`` idle connections to ``port`` (connected, nothing sent)."""
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(count)]


def ask(port: int, raw: bytes) -> bytes:
    """One request on a fresh raw socket; everything until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(raw)
        return read_until_closed(sock)


HEALTH = b"GET /health HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
CHAT_BODY = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
CHAT = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(CHAT_BODY), CHAT_BODY)
)


def counts(h: Harness) -> tuple[int, int]:
    """Open (public, admin) connections; read on the loop thread."""
    listener = h.gateway.connections
    return len(listener._connections), len(listener._kept.connections)


def open_counts(h: Harness) -> tuple[int, int]:
    return h.read(lambda: counts(h))


def test_a_public_flood_leaves_the_admin_port_answering(gw: Harness) -> None:
    idle = flood(gw.port, PUBLIC_BUDGET + 8)
    try:
        assert gw.call(lambda: gw.wait_until(lambda: counts(gw)[0] == PUBLIC_BUDGET))
        # The public port is full: a user gets a clean 503 ...
        assert status_of(ask(gw.port, CHAT)) == 503
        # ... and the operator's /health still answers, from its own budget.
        reply = ask(gw.gateway.admin_port, HEALTH)
        assert status_of(reply) == 200, reply[:200]
        assert json.loads(reply.partition(b"\r\n\r\n")[2])["status"] == "ok"
    finally:
        for sock in idle:
            sock.close()


def test_an_admin_flood_never_eats_the_public_budget(gw: Harness) -> None:
    idle = flood(gw.gateway.admin_port, PUBLIC_BUDGET + ADMIN_BUDGET)
    try:
        assert gw.call(lambda: gw.wait_until(lambda: counts(gw)[1] == ADMIN_BUDGET))
        assert open_counts(gw) == (0, ADMIN_BUDGET)
        # Past its own budget the admin port refuses, with a reason of its own.
        assert status_of(ask(gw.gateway.admin_port, HEALTH)) == 503
        refused = gw.read(lambda: dict(gw.gateway.state.refused))
        assert refused.get("too_many_admin_connections", 0) >= 1
        assert refused.get("too_many_connections", 0) == 0
        # Users are served as if nothing happened.
        reply = ask(gw.port, CHAT)
        assert status_of(reply) == 200, reply[:200]
    finally:
        for sock in idle:
            sock.close()
