"""``--workers N``: limits split so the totals hold, refusals at start-up, and a real
supervisor that restarts a killed worker, forwards SIGHUP, stops on SIGTERM and keeps
max_concurrent across its workers (the simulator never sees more generations at once)."""

from __future__ import annotations

import errno
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clawproxy.config import Config, ConfigError, config_from_mapping
from clawproxy.process.workers import check_workers, lock_port, reserve_port, share, worker_config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.proctree import descendants  # noqa: E402
from bench.services import (  # noqa: E402
    free_port,
    simulator_stats,
    start_gateway,
    start_simulator,
)

# Generous bounds for a loaded CI machine; nothing here measures speed.
WAIT_S = 20.0


def config(**overrides: object) -> Config:
    return config_from_mapping({}, overrides=overrides)


@pytest.mark.parametrize("total", [0, 1, 3, 4, 7, 64, 101])
@pytest.mark.parametrize("workers", [1, 2, 3, 8])
def test_shares_add_up_and_differ_by_at_most_one(total: int, workers: int) -> None:
    parts = [share(total, workers, i) for i in range(workers)]
    assert sum(parts) == total
    assert max(parts) - min(parts) <= 1
    assert parts == sorted(parts, reverse=True)


def test_worker_configs_split_the_limits_and_the_admin_port() -> None:
    cfg = config(**{"gateway.max_concurrent": 5, "gateway.queue_size": 3})
    workers = [worker_config(cfg, i, 2, 8123) for i in range(2)]
    assert [w.gateway.max_concurrent for w in workers] == [3, 2]
    assert [w.gateway.queue_size for w in workers] == [2, 1]
    assert {w.server.port for w in workers} == {8123}
    assert workers[0].gateway.debug_port == cfg.gateway.debug_port
    assert (workers[1].gateway.debug_host, workers[1].gateway.debug_port) == ("127.0.0.1", 0)
    # Only worker 0 samples the GPU (and so sends alerts).
    assert [w.gpu.enabled for w in workers] == [True, False]


def test_each_node_cap_is_split_across_the_workers() -> None:
    nodes = [
        {"name": "a", "url": "http://127.0.0.1:1", "max_concurrent": 5},
        {"name": "b", "url": "http://127.0.0.1:2"},  # gateway.max_concurrent's share
    ]
    cfg = config(**{"gateway.max_concurrent": 4, "nodes": nodes})
    workers = [worker_config(cfg, i, 2, 8123) for i in range(2)]
    assert [w.nodes[0].max_concurrent for w in workers] == [3, 2]
    assert [(w.nodes[1].max_concurrent, w.gateway.max_concurrent) for w in workers] == [
        (None, 2),
        (None, 2),
    ]
    # Each worker needs a slot on each node: 5 slots cannot go to 6 workers.
    roomy = config(**{"gateway.max_concurrent": 8, "nodes": nodes})
    with pytest.raises(ConfigError, match=r"nodes\[0\]\.max_concurrent: node 'a' has 5 slot"):
        check_workers(roomy, 6)


@pytest.mark.parametrize("workers", [0, 5])
def test_impossible_worker_counts_are_config_errors(workers: int) -> None:
    with pytest.raises(ConfigError):
        check_workers(config(**{"gateway.max_concurrent": 4}), workers)


@pytest.mark.parametrize("extra", [["--workers", "9"], ["--workers", "2", "--demo"]])
def test_cli_refuses_with_one_line_and_status_2(extra: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "clawproxy", "--port", "0", *extra],
        capture_output=True,
        text=True,
        timeout=WAIT_S,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.startswith("clawproxy: config error: ")
    assert len(done.stderr.strip().splitlines()) == 1


def workers_of(pid: int) -> set[int]:
    return set(descendants(pid)) - {pid}


def wait_for(predicate: object, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def stream_ok(port: int) -> bool:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
    try:
        body = b'{"stream":true,"max_tokens":3,"messages":[{"role":"user","content":"hi"}]}'
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status == 200 and resp.read().endswith(b"data: [DONE]\n\n")
    finally:
        conn.close()


def test_supervisor_restarts_a_killed_worker_and_stops_on_sigterm(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, rate=0, tokens=3)
    try:
        gw = start_gateway(tmp_path, sim.port, workers=2)
        try:
            first = workers_of(gw.pid)
            assert len(first) == 2
            assert all(stream_ok(gw.port) for _ in range(4))
            victim = min(first)
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: len(workers_of(gw.pid) - {victim}) == 2, "a replacement worker")
            log = tmp_path / "gateway.log"
            wait_for(lambda: log.read_text().count("listening on http") == 3, "it to listen")
            assert all(stream_ok(gw.port) for _ in range(4))
            # SIGHUP is forwarded and handled (log reopened): no worker dies of it.
            before = workers_of(gw.pid)
            gw.proc.send_signal(signal.SIGHUP)
            wait_for(lambda: log.read_text().count("SIGHUP") >= 2, "both workers to reload")
            assert workers_of(gw.pid) == before
            gw.proc.send_signal(signal.SIGTERM)
            assert gw.proc.wait(WAIT_S) == 0
            assert not any(Path(f"/proc/{pid}").exists() for pid in workers_of(gw.pid))
        finally:
            gw.stop()
    finally:
        simulator_stats(sim)
    assert "restarting" in (tmp_path / "gateway.log").read_text()


def test_workers_never_exceed_max_concurrent_in_total(tmp_path: Path) -> None:
    args = ["--limit-check", "--quick", "--workers", "2", "--out", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-2000:]
    assert "PASS" in done.stdout


# --- one gateway per port --------------------------------------------------------------------


def test_reserving_a_port_fails_when_anything_holds_it_even_with_so_reuseport() -> None:
    """An older supervisor (no lock) or any program already on the port, SO_REUSEPORT or
    not, makes the reservation fail instead of joining its reuse-port group."""
    for reuse_port in (True, False):
        other = socket.socket()
        try:
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, int(reuse_port))
            other.bind(("127.0.0.1", 0))
            other.listen()
            with pytest.raises(OSError) as info:
                reserve_port("127.0.0.1", other.getsockname()[1])
            assert info.value.errno == errno.EADDRINUSE
        finally:
            other.close()


def test_one_supervisor_per_port_even_when_two_start_at_once() -> None:
    """The lock closes the race where two supervisors both find the port free."""
    held, port = reserve_port("127.0.0.1", 0)
    try:
        with pytest.raises(OSError) as info:
            lock_port(port)
        assert info.value.errno == errno.EADDRINUSE
    finally:
        for sock in held:
            sock.close()
    # Released with its socket: the port can be had again.
    again, _ = reserve_port("127.0.0.1", port)
    for sock in again:
        sock.close()


def launch(
    tmp_path: Path, name: str, port: int, workers: int
) -> tuple[subprocess.Popen[bytes], Path]:
    """``python -m clawproxy`` on ``port`` (admin on a free port), its stderr in a file."""
    conf = tmp_path / f"{name}.yaml"
    conf.write_text(
        f"server: {{host: 127.0.0.1, port: {port}}}\n"
        "gateway: {debug_port: 0, max_concurrent: 2}\n"
        "model: {endpoint: 'http://127.0.0.1:9'}\n"
        "gpu: {enabled: false}\n"
    )
    err = tmp_path / f"{name}.err"
    with err.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "clawproxy", "--config", str(conf), "--workers", str(workers)],
            cwd=REPO,
            env={**os.environ, "CLAWPROXY_CONFIG": ""},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
        )
    return proc, err


@pytest.mark.parametrize(("first", "second"), [(2, 2), (1, 2), (2, 1), (1, 1)])
def test_a_second_gateway_on_a_served_port_exits_2_naming_the_port(
    tmp_path: Path, first: int, second: int
) -> None:
    """Only one supervisor's workers may share a port: a second gateway (any --workers)
    would otherwise split the traffic and double the GPU's max_concurrent unnoticed."""
    port = free_port()
    one, one_err = launch(tmp_path, "first", port, first)
    two: subprocess.Popen[bytes] | None = None
    try:
        wait_for(lambda: one_err.read_text().count("listening on http") == first, "the first")
        two, two_err = launch(tmp_path, "second", port, second)
        # Fail fast if it serves: before the fix a second supervisor listened happily.
        wait_for(
            lambda: two.poll() is not None or "listening on http" in two_err.read_text(),
            "the second to exit",
        )
        text = two_err.read_text()
        assert two.wait(WAIT_S) == 2, text
        assert f"server.port 127.0.0.1:{port}" in text, text
        assert "already in use" in text, text
        assert "Traceback" not in text
        # The first still serves, alone.
        assert one.poll() is None
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_S)
        conn.request("GET", "/health")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        for proc in (two, one):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(WAIT_S)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    assert one.returncode == 0, one_err.read_text()
