"""``python -m clawproxy`` as a newcomer runs it: the demo streams; a bad config says why."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import openai
from harness import stop_process

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clawproxy", *args],
        cwd=ROOT,
        env={**os.environ, "CLAWPROXY_CONFIG": "", **(env or {})},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_bad_config_stops_start_up_with_one_line_and_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  prot: 8080\n")
    result = run_cli("--config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "server.prot" in lines[0] and "server.port" in lines[0]
    # The environment variable works the same way, and wrong types name their key.
    bad.write_text("gateway:\n  max_concurrent: lots\n")
    result = run_cli(env={"CLAWPROXY_CONFIG": str(bad)})
    assert result.returncode == 2
    assert "gateway.max_concurrent" in result.stderr


def test_a_log_file_that_cannot_be_opened_names_key_path_and_reason(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder" / "clawproxy.log"
    conf = tmp_path / "clawproxy.yaml"
    conf.write_text(f"logging: {{file: '{missing}'}}\n")
    result = run_cli("--config", str(conf))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("clawproxy: config error: logging.file: ")
    assert str(missing) in lines[0]
    assert "No such file or directory" in lines[0]
    assert f"{missing.parent} does not exist" in lines[0]


def test_a_bad_file_value_stops_start_up_even_under_a_flag(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("server:\n  port: 70000\n")
    result = run_cli("--config", str(bad), "--port", "0", "--version")
    # --version answers before any configuration is read; without it the file is checked.
    assert result.returncode == 0
    result = run_cli("--config", str(bad), "--port", "0")
    assert result.returncode == 2
    assert result.stderr.startswith(f"clawproxy: config error: {bad}: server.port: ")


def test_impossible_flag_value_is_exit_2() -> None:
    result = run_cli("--port", "70000")
    assert result.returncode == 2
    assert "server.port" in result.stderr


def wait_health(port: int, timeout: float = 15.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as resp:
                health: dict[str, object] = json.loads(resp.read())
                return health
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_demo_streams_with_the_official_client_and_stops_cleanly() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "clawproxy", "--demo", "--port", str(port), "--host", "127.0.0.1"],
        cwd=ROOT,
        env={**os.environ, "CLAWPROXY_CONFIG": ""},
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert wait_health(port)["model"] == "qwen3:32b"
        with openai.OpenAI(
            base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0
        ) as client:
            chunks = list(
                client.chat.completions.create(
                    model="qwen3:32b",
                    stream=True,
                    messages=[{"role": "user", "content": "Hello!"}],
                )
            )
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert "Hello!" in text  # the demo model repeats what it was told
        assert len(chunks) > 10  # token by token, not one lump
        assert chunks[-1].choices[0].finish_reason == "stop"
        # Two simulated nodes, so the UI's nodes table has rows; one of them served it.
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/ui/api/stats", timeout=10) as r:
            nodes = json.loads(r.read())["nodes"]
        assert [n["name"] for n in nodes] == ["sim-a", "sim-b"]
        assert sum(n["requests"] for n in nodes) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "curl -N" in err  # the banner shows the newcomer what to try
    assert "Traceback" not in err


# Loaded only where needed: each would stay resident in every idle gateway (issue #6 keeps
# idle RSS at 30 MiB). shutil and difflib come from argparse's formatter and config's "did
# you mean"; importlib.resources (zipfile, tempfile) from reading the UI's files.
NOT_AT_IDLE = (
    "shutil",
    "difflib",
    "importlib.resources",
    "zipfile",
    "tempfile",
    "pynvml",
    "clawproxy.simulator",
    "clawproxy.process.workers",
)

# Starts the gateway as `python -m clawproxy` would, reports one loop pass after start()
# (serve() has then done all it does before waiting) and exits. Lines: "BEFORE <freeze
# count before serving>", then "LOADED <heavy modules loaded>" and "FROZEN <count>".
PROBE = """
import asyncio, gc, sys
from clawproxy.gateway import Gateway
from clawproxy.process import cli, runner

def report_when_serving(config):
    gateway = Gateway(config)
    start = gateway.start

    async def start_then_report_soon():
        port = await start()
        asyncio.get_running_loop().call_soon(report)
        return port

    def report():
        heavy = [m for m in sys.argv[2].split(",") if m in sys.modules]
        print("LOADED", ",".join(heavy), flush=True)
        print("FROZEN", gc.get_freeze_count(), flush=True)
        raise SystemExit(0)

    gateway.start = start_then_report_soon
    return gateway

args = cli.build_parser().parse_args(["--config", sys.argv[1]])
config = cli.load_config(args.config, overrides=cli.overrides_from(args))
cli.setup_logging(config.logging)
print("BEFORE", gc.get_freeze_count(), flush=True)
runner.run(runner.serve(config, make_gateway=report_when_serving))
"""


def probe_serving(tmp_path: Path) -> dict[str, str]:
    """PROBE's report for an idle gateway with the UI on: {"LOADED": ..., "FROZEN": ...}."""
    config = tmp_path / "clawproxy.yaml"
    config.write_text(
        "server: {host: 127.0.0.1, port: 0}\n"
        "gateway: {debug_port: 0}\n"
        "model: {endpoint: 'http://127.0.0.1:9'}\n"
        "ui: {enabled: true}\n"
        f"logging: {{level: info, file: '{tmp_path / 'gw.log'}'}}\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(config), ",".join(NOT_AT_IDLE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    report = dict(line.partition(" ")[::2] for line in done.stdout.splitlines())
    assert {"BEFORE", "LOADED", "FROZEN"} <= report.keys(), done.stdout + done.stderr[-2000:]
    return report


def test_an_idle_gateway_loads_nothing_it_does_not_use(tmp_path: Path) -> None:
    loaded = probe_serving(tmp_path)["LOADED"].strip()
    assert loaded == "", f"loaded at idle: {loaded}"


def test_start_up_objects_are_frozen_once_the_gateway_serves(tmp_path: Path) -> None:
    """Full collections would walk every module and config object every few thousand
    requests; once serving, those are out of the collector's sight (gc.freeze)."""
    report = probe_serving(tmp_path)
    assert report["BEFORE"] == "0"
    assert int(report["FROZEN"]) > 10_000, report


# --- the admin port: a clash names it, --debug-port picks another ----------------------------


def start_cli(*args: str, stderr: Path) -> subprocess.Popen[bytes]:
    with stderr.open("wb") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "clawproxy", *args],
            cwd=ROOT,
            env={**os.environ, "CLAWPROXY_CONFIG": ""},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def test_an_admin_port_clash_names_the_admin_listener_and_the_way_out(tmp_path: Path) -> None:
    admin = free_port()
    conf = tmp_path / "clawproxy.yaml"
    conf.write_text(
        f"server: {{host: 127.0.0.1}}\ngateway: {{debug_port: {admin}}}\n"
        "model: {endpoint: 'http://127.0.0.1:9'}\ngpu: {enabled: false}\n"
    )
    port = free_port()
    first = start_cli("--config", str(conf), "--port", str(port), stderr=tmp_path / "1")
    try:
        wait_health(port)
        second = run_cli("--config", str(conf), "--port", str(free_port()))
    finally:
        assert stop_process(first) == 0
    assert second.returncode == 2
    message = second.stderr.strip().splitlines()[-1]
    assert f"gateway.debug_port 127.0.0.1:{admin}" in message, second.stderr
    assert "already in use" in message
    assert "--debug-port" in message
    # The public port is not blamed.
    assert "server.port" not in message


def test_debug_port_0_takes_a_free_port_and_says_which(tmp_path: Path) -> None:
    port = free_port()
    err = tmp_path / "stderr"
    proc = start_cli(
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--debug-port",
        "0",
        "--upstream",
        "http://127.0.0.1:9",
        stderr=err,
    )
    try:
        wait_health(port)
        found = re.search(r"admin on http://127\.0\.0\.1:(\d+)", err.read_text())
        assert found, err.read_text()
        admin = int(found[1])
        assert admin not in (0, 18789, port)
        with urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics", timeout=5) as resp:
            assert b"clawproxy_draining 0" in resp.read()
    finally:
        assert stop_process(proc) == 0


def test_two_demos_run_side_by_side(tmp_path: Path) -> None:
    """`scripts/demo --port 9000` (its usage line) while another demo runs: the demo takes
    any free admin port, and its banner says which."""
    ports = [free_port(), free_port()]
    procs = [
        start_cli("--demo", "--host", "127.0.0.1", "--port", str(p), stderr=tmp_path / str(p))
        for p in ports
    ]
    try:
        for port in ports:
            assert wait_health(port)["model"] == "qwen3:32b"
    finally:
        codes = [stop_process(proc) for proc in procs]
    assert codes == [0, 0]
    for port in ports:
        banner = (tmp_path / str(port)).read_text()
        assert f"http://127.0.0.1:{port}" in banner
        found = re.search(r"admin \(health, metrics, stats\): http://127\.0\.0\.1:(\d+)/", banner)
        assert found, banner
        assert int(found[1]) not in (0, 18789, port)
