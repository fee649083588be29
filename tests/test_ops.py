"""Process operations with a real ``python -m clawproxy`` process: SIGTERM drains a stream
in flight and exits 0, SIGHUP reopens the log file (also driven by logrotate with the
contrib file) and rereads the API key file."""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from contrib_helpers import logrotate_for, need
from harness import CALL_TIMEOUT, Harness, request

from clawproxy.process import signals

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.services import simulator_stats, start_simulator  # noqa: E402

POLL_S = 0.02
START_TIMEOUT_S = 20.0
LISTENING = re.compile(
    r"listening on http://127\.0\.0\.1:(\d+) .*admin on http://127\.0\.0\.1:(\d+)"
)


@dataclass
class Process:
    proc: subprocess.Popen[bytes]
    log: Path
    port: int
    admin_port: int

    def log_text(self, path: Path | None = None) -> str:
        target = path or self.log
        return target.read_text() if target.exists() else ""

    def wait_for_log(self, needle: str, path: Path | None = None) -> None:
        deadline = time.monotonic() + CALL_TIMEOUT
        while needle not in self.log_text(path):
            assert time.monotonic() < deadline, f"{needle!r} never logged: {self.log_text(path)}"
            assert self.proc.poll() is None, f"exited {self.proc.returncode}: {self.log_text()}"
            time.sleep(POLL_S)


StartFn = Callable[..., Process]


@pytest.fixture
def start(tmp_path: Path) -> Iterator[StartFn]:
    procs: list[subprocess.Popen[bytes]] = []

    def launch(upstream: str | None = None, **settings: object) -> Process:
        """The gateway on the demo simulator, or on ``upstream`` when given."""
        log = tmp_path / "clawproxy.log"
        config: dict[str, dict[str, object]] = {
            "server": {"host": "127.0.0.1", "port": 0},
            "gateway": {"debug_port": 0},
            "logging": {"file": str(log), "level": "info"},
        }
        for dotted, value in settings.items():
            section, key = dotted.split(".", 1)
            config.setdefault(section, {})[key] = value
        conf = tmp_path / "config.yaml"
        conf.write_text(yaml.safe_dump(config))
        with open(tmp_path / "stderr.txt", "ab") as stderr:
            proc = subprocess.Popen(
                [sys.executable, "-m", "clawproxy", "--config", str(conf)]
                + (["--upstream", upstream] if upstream else ["--demo"]),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        procs.append(proc)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (match := LISTENING.search(log.read_text() if log.exists() else "")):
            assert proc.poll() is None, (tmp_path / "stderr.txt").read_text()
            assert time.monotonic() < deadline, "the gateway did not start"
            time.sleep(POLL_S)
        return Process(proc, log, int(match[1]), int(match[2]))

    yield launch
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(CALL_TIMEOUT)


@contextlib.contextmanager
def open_stream(port: int, max_tokens: int | None) -> Iterator[http.client.HTTPResponse]:
    body: dict[str, object] = {"stream": True, "messages": [{"role": "user", "content": "hi"}]}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CALL_TIMEOUT)
    try:
        conn.request("POST", "/v1/chat/completions", body=json.dumps(body))
        resp = conn.getresponse()
        assert resp.status == 200
        yield resp
    finally:
        conn.close()


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except ConnectionRefusedError:
        return True
    return False


def fetch(port: int, path: str) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CALL_TIMEOUT)
    try:
        conn.request("GET", path, headers={"Host": "localhost"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def get(port: int, path: str) -> int:
    return fetch(port, path)[0]


# --- SIGTERM ---------------------------------------------------------------------------------


def test_sigterm_lets_a_stream_in_flight_finish(start: StartFn) -> None:
    gw = start(**{"server.drain_timeout": "10s"})
    tokens = 40  # the demo model streams 40 a second: about one second of stream
    with open_stream(gw.port, tokens) as resp:
        first = resp.readline()
        assert first.startswith(b"data: ")  # the stream is under way
        gw.proc.send_signal(signal.SIGTERM)
        # New connections are refused at once, while the stream goes on.
        deadline = time.monotonic() + 5
        while not refused(gw.port):
            assert time.monotonic() < deadline
            time.sleep(POLL_S)
        rest = first + resp.read()  # read() raises IncompleteRead if the stream is cut
    events = [json.loads(line[6:]) for line in rest.split(b"\n\n") if line.startswith(b"data: {")]
    # The demo model thinks first; thinking counts against max_tokens, as on Ollama.
    deltas = [e["choices"][0]["delta"] for e in events if e["choices"]]
    pieces = [d for d in deltas if d.get("content") or d.get("reasoning_content")]
    assert len(pieces) == tokens
    assert events[-1]["choices"][0]["finish_reason"] == "length"
    assert rest.endswith(b"data: [DONE]\n\n")
    assert gw.proc.wait(CALL_TIMEOUT) == 0
    log = gw.log_text()
    assert "shutting down: draining for up to 10s" in log
    assert re.search(r'"POST /v1/chat/completions" 200 .* outcome=ok', log)


def test_sigterm_cuts_what_outlives_the_drain(start: StartFn) -> None:
    drain_s = 0.3
    gw = start(**{"server.drain_timeout": f"{int(drain_s * 1000)}ms"})
    # The demo's reply is about 50 tokens at 40 a second: longer than the drain.
    with open_stream(gw.port, None) as resp:
        assert resp.readline().startswith(b"data: ")
        signalled = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        with pytest.raises(http.client.IncompleteRead) as cut:
            resp.read()
    assert b"[DONE]" not in cut.value.partial
    assert gw.proc.wait(CALL_TIMEOUT) == 0
    assert time.monotonic() - signalled < drain_s + 3


def test_sigterm_keeps_the_admin_port_readable_and_logs_the_cut_as_shutting_down(
    start: StartFn, tmp_path: Path
) -> None:
    """While a SIGTERM drain runs, the public port refuses (nginx moves on) and the admin
    port still answers, so `draining` can be read; a stream cut at the deadline is logged
    with outcome=shutting_down."""
    sim = start_simulator(tmp_path, rate=20, tokens=400)  # a 20 s stream
    try:
        gw = start(f"http://127.0.0.1:{sim.port}", **{"server.drain_timeout": "2s"})
        with open_stream(gw.port, None) as resp:
            assert resp.readline().startswith(b"data: ")
            gw.proc.send_signal(signal.SIGTERM)
            gw.wait_for_log("shutting down: draining")
            deadline = time.monotonic() + 5
            while not refused(gw.port):
                assert time.monotonic() < deadline
                time.sleep(POLL_S)
            status, body = fetch(gw.admin_port, "/health")
            assert (status, json.loads(body)["status"]) == (503, "draining")
            status, body = fetch(gw.admin_port, "/metrics")
            assert status == 200 and b"\nclawproxy_draining 1\n" in body
            with pytest.raises(http.client.IncompleteRead):
                resp.read()
        assert gw.proc.wait(CALL_TIMEOUT) == 0
        assert refused(gw.admin_port)
    finally:
        simulator_stats(sim)
    assert re.search(r'"POST /v1/chat/completions" 200 .* outcome=shutting_down', gw.log_text())


# --- SIGHUP ----------------------------------------------------------------------------------


def test_sighup_reopens_the_log_file(start: StartFn) -> None:
    gw = start()
    assert get(gw.port, "/health") == 200
    gw.wait_for_log('"GET /health" 200')
    rotated = gw.log.with_name("clawproxy.log.1")
    gw.log.rename(rotated)
    gw.proc.send_signal(signal.SIGHUP)
    gw.wait_for_log("SIGHUP: log file reopened")
    assert get(gw.port, "/v1/models") == 200
    gw.wait_for_log('"GET /v1/models" 200')
    old = rotated.read_text()
    assert '"GET /health" 200' in old
    assert "/v1/models" not in old
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(CALL_TIMEOUT) == 0


def test_logrotate_with_the_contrib_file(start: StartFn, tmp_path: Path) -> None:
    tool = need("logrotate")
    gw = start()
    assert get(gw.port, "/health") == 200
    gw.wait_for_log('"GET /health" 200')
    conf = tmp_path / "logrotate.conf"
    conf.write_text(logrotate_for(tmp_path, postrotate=f"kill -HUP {gw.proc.pid}"))
    result = subprocess.run(
        [tool, "-f", "-s", str(tmp_path / "state"), str(conf)],
        capture_output=True,
        text=True,
        timeout=CALL_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    rotated = tmp_path / "clawproxy.log.1"  # delaycompress: the newest rotation stays plain
    assert '"GET /health" 200' in rotated.read_text()
    gw.wait_for_log("SIGHUP: log file reopened")
    assert get(gw.port, "/v1/models") == 200
    gw.wait_for_log('"GET /v1/models" 200')
    assert "/v1/models" not in rotated.read_text()
    gw.proc.send_signal(signal.SIGTERM)
    assert gw.proc.wait(CALL_TIMEOUT) == 0


# --- the reload hook in process --------------------------------------------------------------


def test_reload_rereads_the_key_file(tmp_path: Path, loop_kind: str) -> None:
    keys = tmp_path / "keys"
    keys.write_text("alice sk-first-key\n")
    keys.chmod(0o600)
    with Harness({"auth.api_keys_file": str(keys), "gpu.enabled": False}, loop_kind=loop_kind) as h:

        def models(key: str) -> int:
            return request(h, "GET", "/v1/models", headers={"Authorization": f"Bearer {key}"})[0]

        assert (models("sk-first-key"), models("sk-second-key")) == (200, 401)
        keys.write_text("alice sk-first-key\nbob sk-second-key\n")
        h.read(lambda: signals.reload(h.gateway))
        assert (models("sk-first-key"), models("sk-second-key")) == (200, 200)
        # A broken file keeps the keys in force.
        keys.write_text("too many words on this line\n")
        h.read(lambda: signals.reload(h.gateway))
        assert models("sk-second-key") == 200


def test_second_signal_exits_at_once(start: StartFn) -> None:
    gw = start(**{"server.drain_timeout": "30s"})
    with open_stream(gw.port, None) as resp:
        assert resp.readline().startswith(b"data: ")
        gw.proc.send_signal(signal.SIGTERM)
        gw.wait_for_log("shutting down")
        gw.proc.send_signal(signal.SIGINT)
        assert gw.proc.wait(CALL_TIMEOUT) == signals.EXIT_FORCED


def test_sighup_rereads_the_nodes_and_keeps_them_on_a_bad_file(
    start: StartFn, tmp_path: Path
) -> None:
    """SIGHUP rereads the config file's nodes: list (README, Several Ollama nodes): the
    lone default node is drained and forgotten, the listed ones serve; a broken file is
    logged and changes nothing."""
    sim = start_simulator(tmp_path, rate=1000, tokens=5)
    try:
        url = f"http://127.0.0.1:{sim.port}"
        gw = start(url)
        assert get(gw.port, "/health") == 200
        conf = tmp_path / "config.yaml"
        config = yaml.safe_load(conf.read_text())
        config["nodes"] = [
            {"name": "gpu-a", "url": url, "max_concurrent": 2},
            {"name": "gpu-b", "url": url, "max_concurrent": 3},
        ]
        conf.write_text(yaml.safe_dump(config))
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_for_log("nodes reloaded: added gpu-a; added gpu-b; draining default")
        status, body = fetch(gw.admin_port, "/nodes")
        nodes = json.loads(body)["nodes"]
        assert status == 200
        assert [(n["name"], n["max_concurrent"]) for n in nodes] == [("gpu-a", 2), ("gpu-b", 3)]
        with open_stream(gw.port, 3) as resp:
            assert b"data: [DONE]" in resp.read()
        config["nodes"][0]["url"] = "ftp://nowhere"
        conf.write_text(yaml.safe_dump(config))
        gw.proc.send_signal(signal.SIGHUP)
        gw.wait_for_log("SIGHUP: config error: ")
        assert "nodes[0].url" in gw.log_text()
        assert len(json.loads(fetch(gw.admin_port, "/nodes")[1])["nodes"]) == 2
        gw.proc.send_signal(signal.SIGTERM)
        assert gw.proc.wait(CALL_TIMEOUT) == 0
    finally:
        simulator_stats(sim)  # stops it and closes its pipe
