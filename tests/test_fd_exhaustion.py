"""File descriptors run out (RELIABILITY checklist 33): no crash, no busy loop, recovery."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

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
