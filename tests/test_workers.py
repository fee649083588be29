"""``--workers N``: limits split so the totals hold, refusals at start-up, and a real
supervisor that restarts a killed worker, forwards SIGHUP, stops on SIGTERM and keeps
max_concurrent across its workers (the simulator never sees more generations at once)."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from clawproxy.config import Config, ConfigError, config_from_mapping
from clawproxy.process.workers import check_workers, share, worker_config

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.proctree import descendants  # noqa: E402
from bench.services import simulator_stats, start_gateway, start_simulator  # noqa: E402

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
