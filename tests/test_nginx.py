"""Real nginx (the Debian package) in front of the gateway, configured from the contrib site
file: tokens arrive at the client one by one, and only the public paths are reachable."""

from __future__ import annotations

import contextlib
import http.client
import itertools
import json
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from contrib_helpers import NGINX_SITE, need, nginx_main_conf
from harness import CALL_TIMEOUT, Harness

from clawproxy.simulator import Fault, Reply

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


@contextlib.contextmanager
def nginx_in_front(
    tmp_path: Path,
    settings: dict[str, object] | None = None,
    edit_site: Callable[[str], str] = lambda site: site,
) -> Iterator[tuple[Harness, int]]:
    """A gateway on the simulator with real nginx in front, from the contrib site file."""
    tool = need("nginx")
    config = {"gpu.enabled": False, **(settings or {})}
    with Harness(config, sim_options={"token_rate": TOKEN_RATE}) as h:
        port = free_port()
        conf = tmp_path / "nginx.conf"
        conf.write_text(nginx_main_conf(tmp_path, edit_site(site_for(port, h.port))))
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


@pytest.fixture
def front(tmp_path: Path) -> Iterator[tuple[Harness, int]]:
    with nginx_in_front(tmp_path) as pair:
        yield pair


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


def test_client_abort_through_nginx_closes_the_ollama_stream(front: tuple[Harness, int]) -> None:
    """RELIABILITY checklist 43 through nginx: browser leaves, nginx closes our socket (its
    proxy_ignore_client_abort is off), the gateway closes Ollama's within a second."""
    h, port = front
    h.sim.next_reply(Reply(tokens=[" t"] * 400))
    body = json.dumps({"messages": [{"role": "user", "content": "x"}], "stream": True})
    sock = socket.create_connection(("127.0.0.1", port), timeout=CALL_TIMEOUT)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode())
    )
    data = b""
    while b"data: {" not in data:
        chunk = sock.recv(4096)
        assert chunk, "nginx closed before the first event"
        data += chunk
    sock.close()
    record = h.sim.streams[-1]
    assert h.call(lambda: record.wait_ended(timeout=1.0)) == "client_closed"
    assert record.tokens_sent < 400
    assert h.settled()


def test_heartbeats_keep_a_slow_first_token_alive_behind_nginx(tmp_path: Path) -> None:
    """RELIABILITY checklist 24: nginx's read timeout (1 s here) shorter than the model
    load (1.5 s): without the gateway's heartbeats nginx would cut the stream with a 504."""

    def short_read_timeout(site: str) -> str:
        return site.replace("proxy_read_timeout 3600s;", "proxy_read_timeout 1s;")

    settings = {"server.heartbeat_interval": "300ms", "server.timeout": "5s"}
    with nginx_in_front(tmp_path, settings, short_read_timeout) as (h, port):
        h.sim.next_reply(Reply(tokens=["late", " but", " whole"], fault=Fault(first_delay=1.5)))
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CALL_TIMEOUT)
        body = json.dumps({"messages": [{"role": "user", "content": "x"}], "stream": True})
        conn.request("POST", "/v1/chat/completions", body=body)
        resp = conn.getresponse()
        text = resp.read()
        conn.close()
        assert resp.status == 200
        assert text.count(b": keep-alive") >= 3
        assert b"data: [DONE]" in text
        events = [json.loads(line[6:]) for line in text.split(b"\n") if line.startswith(b"data: {")]
        content = "".join(
            e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"]
        )
        assert content == "late but whole"
