"""File descriptors run out (RELIABILITY checklist 33): no crash, no busy loop, recovery.

And they should not run out: at start ``server.max_connections`` is fitted to RLIMIT_NOFILE
(the soft limit raised as far as needed, else max_connections clamped, said in the log),
so a flood of idle sockets meets 503s while admin /health and chat still answer; an
accept() that fails anyway is logged (stock asyncio; uvloop never reports it)."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import re
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from harness import Harness, read_until_closed, stop_process

from clawproxy.config import ConfigError, config_from_mapping
from clawproxy.http.listener import ACCEPT_FAILURE_LOG_INTERVAL_S, _AcceptWatch
from clawproxy.ollama.modelctl import ADMIN_POOL_IDLE
from clawproxy.process.fds import (
    FD_MARGIN,
    INFINITY,
    FdPlan,
    fit_open_files,
    open_files_needed,
    plan_open_files,
    reserved_descriptors,
)

ROOT = Path(__file__).resolve().parent.parent
FD_LIMIT = 64


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def health(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return sock.recv(200)


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="util-linux prlimit is not installed")
def test_out_of_file_descriptors_is_survived() -> None:
    port = free_port()
    args = [sys.executable, "-m", "clawproxy", "--port", str(port), "--host", "127.0.0.1"]
    args += ["--upstream", "http://127.0.0.1:9", "--log-level", "warning"]
    env = {**os.environ, "CLAWPROXY_CONFIG": ""}
    proc = subprocess.Popen(
        ["prlimit", f"--nofile={FD_LIMIT}", *args], cwd=ROOT, env=env, stderr=subprocess.PIPE
    )
    socks: list[socket.socket] = []
    try:
        assert wait_for(lambda: health(port).startswith(b"HTTP/1.1 200"))
        # Twice the limit: the kernel queues what the gateway cannot accept.
        for _ in range(2 * FD_LIMIT):
            socks.append(socket.create_connection(("127.0.0.1", port), timeout=2))
        start = cpu_seconds(proc.pid)
        time.sleep(0.4)
        # Idle while starved: accept errors must not turn into a busy loop.
        assert cpu_seconds(proc.pid) - start < 0.2
        assert proc.poll() is None
        for sock in socks:
            sock.close()
        socks.clear()
        assert wait_for(lambda: health(port).startswith(b"HTTP/1.1 200"))
    finally:
        for sock in socks:
            sock.close()
        proc.terminate()
        _, err = proc.communicate(timeout=15)
    assert proc.returncode == 0
    assert b"Traceback" not in err


# --- max_connections against RLIMIT_NOFILE ---------------------------------------------------

IDLE_FLOOD = 300


def raw_get(port: int, path: str, host: bytes = b"localhost") -> bytes:
    """One raw request; everything until the server closes (b"" for an empty reply)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path.encode(), host)
        )
        return read_until_closed(sock)


def raw_chat(port: int) -> bytes:
    body = json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
        )
        return read_until_closed(sock)


def open_connections(admin: int) -> int:
    """``clawproxy_open_connections`` from the admin port's /metrics."""
    metrics = raw_get(admin, "/metrics")
    found = re.search(rb"\nclawproxy_open_connections (\d+)", metrics)
    assert found, metrics[:300]
    return int(found[1])


def open_file_limits(pid: int) -> tuple[int, int]:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                soft, hard = line.split()[3:5]
                return int(soft), int(hard)
    raise AssertionError("no 'Max open files' line")


def start_limited(nofile: str, *extra: str, log: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = free_port()
    args = [sys.executable, "-m", "clawproxy", "--port", str(port), "--host", "127.0.0.1", *extra]
    with log.open("wb") as err:
        proc = subprocess.Popen(
            ["prlimit", f"--nofile={nofile}", *args],
            cwd=ROOT,
            env={**os.environ, "CLAWPROXY_CONFIG": ""},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    return proc, port


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="util-linux prlimit is not installed")
def test_max_connections_over_the_open_file_limit_is_clamped_and_said(tmp_path: Path) -> None:
    """Soft and hard 256 (a tight appliance), max_connections 2048 (the default): the
    gateway says so at start, naming both numbers, and under 300 idle sockets admin /health
    answers, a chat request gets a clean 503 (never an empty reply), and once a few idle
    sockets leave, chat works."""
    admin = free_port()
    log = tmp_path / "stderr"
    proc, port = start_limited(
        "256:256", "--demo", "--debug-port", str(admin), "--log-level", "info", log=log
    )
    idle: list[socket.socket] = []
    try:
        assert wait_for(lambda: raw_get(admin, "/health").startswith(b"HTTP/1.1 200")), (
            log.read_text()
        )
        text = log.read_text()
        clamp = [line for line in text.splitlines() if "max_connections" in line]
        assert clamp, text
        assert "2048" in clamp[0] and "256" in clamp[0], clamp[0]
        clamped = 256 - reserved_descriptors(config_from_mapping({}))
        assert f"clamped to {clamped}" in clamp[0], clamp[0]
        for _ in range(IDLE_FLOOD):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        # The gateway holds as many as fit: the rest were answered 503 and closed.
        assert wait_for(lambda: open_connections(admin) >= clamped)
        reply = raw_get(admin, "/health")
        assert reply.startswith(b"HTTP/1.1 200"), reply[:300]
        reply = raw_chat(port)
        assert reply.startswith(b"HTTP/1.1 503"), reply[:300]
        assert b'"code":"too_many_connections"' in reply
        for sock in idle[:20]:
            sock.close()
        del idle[:20]
        assert wait_for(lambda: raw_chat(port).startswith(b"HTTP/1.1 200"), timeout=5)
        assert proc.poll() is None
    finally:
        for sock in idle:
            sock.close()
        code = stop_process(proc)
    assert code == 0
    assert "Traceback" not in log.read_text()


@pytest.mark.skipif(shutil.which("prlimit") is None, reason="util-linux prlimit is not installed")
def test_a_low_soft_open_file_limit_is_raised_as_far_as_needed(tmp_path: Path) -> None:
    log = tmp_path / "stderr"
    proc, port = start_limited(
        "256:4096", "--upstream", "http://127.0.0.1:9", "--debug-port", "0", log=log
    )
    try:
        assert wait_for(lambda: health(port).startswith(b"HTTP/1.1 200")), log.read_text()
        needed = open_files_needed(config_from_mapping({}))
        assert open_file_limits(proc.pid) == (needed, 4096)
    finally:
        code = stop_process(proc)
    assert code == 0
    text = log.read_text()
    assert "RLIMIT_NOFILE" in text and f"from 256 to {needed}" in text, text
    assert "clamped" not in text


@pytest.mark.parametrize(
    ("max_connections", "reserved", "soft", "hard", "expected"),
    [
        # Room already: nothing changes.
        (2048, 100, 4096, 4096, FdPlan(4096, 2048)),
        (2048, 100, INFINITY, INFINITY, FdPlan(INFINITY, 2048)),
        # Raised as far as needed, never to the hard limit for its own sake.
        (2048, 100, 1024, 524288, FdPlan(2148, 2048)),
        (2048, 100, 1024, INFINITY, FdPlan(2148, 2048)),
        # The hard limit is too low: raised to it, and max_connections clamped to what fits.
        (2048, 100, 256, 1024, FdPlan(1024, 924)),
        (2048, 100, 256, 256, FdPlan(256, 156)),
        # Not one connection fits.
        (2048, 100, 64, 64, FdPlan(64, 0)),
    ],
)
def test_the_open_file_plan(
    max_connections: int, reserved: int, soft: int, hard: int, expected: FdPlan
) -> None:
    assert plan_open_files(max_connections, reserved, soft, hard) == expected


def test_the_reserve_counts_the_admin_budget_ollama_and_the_process() -> None:
    config = config_from_mapping(
        {
            "gateway": {"admin_max_connections": 10, "max_concurrent": 3},
            "upstream": {"pool_size": 5},
        }
    )
    assert reserved_descriptors(config) == 10 + 3 + 5 + ADMIN_POOL_IDLE + FD_MARGIN
    assert open_files_needed(config) == 2048 + reserved_descriptors(config)


def test_a_limit_nothing_fits_under_stops_start_up_naming_both_numbers() -> None:
    config = config_from_mapping({"server": {"max_connections": 500}})
    with pytest.raises(ConfigError) as caught:
        fit_open_files(config, limits=(48, 48), set_soft=lambda soft: None)
    message = str(caught.value)
    assert message.startswith("server.max_connections: ")
    assert "500" in message and "48" in message


def test_a_clamp_is_logged_naming_both_numbers(caplog: pytest.LogCaptureFixture) -> None:
    raised: list[int] = []
    config = config_from_mapping({})
    fitted = fit_open_files(config, limits=(256, 512), set_soft=raised.append)
    assert raised == [512]
    assert fitted.server.max_connections == 512 - reserved_descriptors(config)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "2048" in warning and "512" in warning and "clamped" in warning


# --- accept() out of descriptors (stock asyncio; libuv handles it out of our sight) ------------


# asyncio's constants.ACCEPT_RETRY_DELAY: a failed accept() is retried this much later.
ASYNCIO_ACCEPT_RETRY_S = 1.0


def test_accept_out_of_descriptors_is_logged_once_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Stock asyncio reports a failed accept() to the loop's exception handler and retries
    a second later: the gateway logs it (rate-limited), and says when it accepts again.
    uvloop is not covered: libuv accepts and closes such connections itself (its reserve
    descriptor) and tells Python nothing; the start-up budget is what keeps that away."""
    caplog.set_level(logging.INFO)
    with Harness({"gpu.enabled": False}, loop_kind="asyncio") as h:
        watch = h.gateway.connections._accepts

        def accept_failing(failing: bool) -> bool:
            return h.call(lambda: h.wait_until(lambda: watch.failing is failing, 10.0))

        clients = [socket.socket() for _ in range(2)]
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        lowest = os.open("/dev/null", os.O_RDONLY)
        os.close(lowest)
        try:
            # No descriptor below the limit is free: the next accept() fails with EMFILE.
            resource.setrlimit(resource.RLIMIT_NOFILE, (lowest, hard))
            for sock in clients:
                sock.settimeout(5)
                sock.connect(("127.0.0.1", h.port))
            assert accept_failing(True)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        # asyncio's own retry (a second later) accepts the waiting clients.
        assert accept_failing(False)
        # It scheduled one retry per failed accept(), spread over the failing pass: let the
        # last of them run while the port is open (after it closes they would fail loudly).
        retried = ASYNCIO_ACCEPT_RETRY_S + 0.1
        assert h.call(
            lambda: h.wait_until(lambda: h.loop.time() > watch.last_failed_at + retried, 10.0)
        )
        try:
            clients[0].sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert read_until_closed(clients[0]).startswith(b"HTTP/1.1 200")
        finally:
            for sock in clients:
                sock.close()
    ours = [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("clawproxy") and "accept" in r.getMessage()
    ]
    failed = [m for m in ours if m.startswith("cannot accept")]
    assert len(failed) == 1, ours
    assert "server.port" in failed[0] and "EMFILE" in failed[0], failed[0]
    assert any(m.startswith("accepting connections again after") for m in ours), ours
    # Handled: asyncio's own handler did not log it as an unexpected error.
    assert not [r for r in caplog.records if r.name == "asyncio"]


class FakeClockLoop:
    """Only what the accept watch reads of a loop: its clock (set by the test) and its
    exception handler."""

    def __init__(self) -> None:
        self.now = 0.0
        self.handler: Any = None

    def time(self) -> float:
        return self.now

    def get_exception_handler(self) -> Any:
        return self.handler

    def set_exception_handler(self, handler: Any) -> None:
        self.handler = handler


def test_accept_failures_are_told_once_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    loop = FakeClockLoop()
    watch = _AcceptWatch(cast(asyncio.AbstractEventLoop, loop))
    listening = socket.socket()
    try:
        server = SimpleNamespace(sockets=[listening])
        watch.watch(cast(asyncio.AbstractServer, server), "server.port")
        failure = {"exception": OSError(errno.EMFILE, "Too many open files"), "socket": listening}
        for loop.now in (0.0, 1.0, 2.0, ACCEPT_FAILURE_LOG_INTERVAL_S - 0.1):
            loop.handler(loop, failure)
        told = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cannot")]
        assert len(told) == 1
        loop.now = ACCEPT_FAILURE_LOG_INTERVAL_S + 0.5
        loop.handler(loop, failure)
        told = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cannot")]
        assert len(told) == 2
        assert watch.failing
        loop.now = 12.0
        watch.recovered()
        assert not watch.failing
        assert caplog.records[-1].getMessage() == (
            "accepting connections again after 12.0s out of file descriptors"
        )
    finally:
        watch.close()
        listening.close()
    assert loop.handler is None
