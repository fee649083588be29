"""Real nginx (the Debian package) in front of the gateway, configured from the contrib site
file: tokens arrive at the client one by one, and only the public paths are reachable."""

from __future__ import annotations

import http.client
import itertools
import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from harness import CALL_TIMEOUT, Harness
from test_contrib import NGINX_SITE, need, nginx_main_conf

from clawproxy.simulator import Reply

TOKENS = 10
TOKEN_RATE = 20.0  # per second: the stream takes about half a second
STARTUP_TIMEOUT_S = 10.0
POLL_S = 0.02


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def site_for(nginx_port: int, gateway_port: int) -> str:
    """The contrib site verbatim, except where it listens and where clawproxy is."""
    site = NGINX_SITE.read_text()
    for original in ("listen 80;", "listen [::]:80;", "server 127.0.0.1:8080;"):
        assert original in site
    site = site.replace("listen 80;", f"listen 127.0.0.1:{nginx_port};")
    site = site.replace("listen [::]:80;", "")
    return site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{gateway_port};")


@pytest.fixture
def front(tmp_path: Path) -> Iterator[tuple[Harness, int]]:
    tool = need("nginx")
    with Harness({"gpu.enabled": False}, sim_options={"token_rate": TOKEN_RATE}) as h:
        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(nginx_main_conf(tmp_path, site_for(port, h.port)))
        error_log = str(tmp_path / "logs" / "error.log")
        proc = subprocess.Popen(
            [tool, "-e", error_log, "-p", str(tmp_path), "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT_S
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        raise AssertionError(
                            f"nginx did not start: {proc.stderr.read() if proc.stderr else ''!r}"
                        ) from None
                    time.sleep(POLL_S)
            yield h, port
        finally:
            proc.terminate()
            proc.wait(CALL_TIMEOUT)
            if proc.stderr is not None:
                proc.stderr.close()


def test_tokens_arrive_one_by_one_through_nginx(front: tuple[Harness, int]) -> None:
    h, port = front
    h.sim.next_reply(Reply(tokens=[f" t{i}" for i in range(TOKENS)]))
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CALL_TIMEOUT)
    body = {"stream": True, "messages": [{"role": "user", "content": "count"}]}
    conn.request("POST", "/v1/chat/completions", body=json.dumps(body))
    started = time.monotonic()
    resp = conn.getresponse()
    assert resp.status == 200
    assert resp.getheader("content-type") == "text/event-stream"
    arrivals: list[float] = []
    text = ""
    done = False
    while line := resp.readline():
        if not line.startswith(b"data: "):
            continue
        if line.strip() == b"data: [DONE]":
            done = True
            continue
        delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
        if delta:
            arrivals.append(time.monotonic() - started)
            text += delta
    conn.close()
    assert done
    assert text == "".join(f" t{i}" for i in range(TOKENS))
    assert len(arrivals) == TOKENS
    # Paced at 20 tokens a second, the stream spans about (TOKENS - 1) / 20 = 0.45 s. Had
    # nginx buffered it, every event would arrive in one lump at the end.
    spread = arrivals[-1] - arrivals[0]
    assert spread >= 0.6 * (TOKENS - 1) / TOKEN_RATE, arrivals
    assert arrivals[0] < arrivals[-1] / 2, arrivals
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert sum(gap > 0.2 / TOKEN_RATE for gap in gaps) >= TOKENS // 2, gaps
    assert h.settled()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/v1/models", 200),
        ("GET", "/health", 200),
        ("GET", "/metrics", 404),
        ("GET", "/stats", 404),
        ("POST", "/v1/model/load", 404),
        ("GET", "/api/tags", 404),
        ("POST", "/api/pull", 404),
    ],
)
def test_only_public_paths_pass(
    front: tuple[Harness, int], method: str, path: str, status: int
) -> None:
    _, port = front
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CALL_TIMEOUT)
    conn.request(method, path, body=b'{"model": "llama3.2"}' if method == "POST" else None)
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == status
