"""Starting and stopping the processes of a benchmark run: simulator, nginx, gateway
(and LiteLLM, the optional comparator, and the floor proxies of ``bench/floor.py``); the
gateway either from this checkout or, for ``--baseline DIR``, from another one.

Theory of operation: every run starts its processes afresh on new loopback ports and
stops them afterwards, so no run inherits another's memory, connections or caches, and a
process's peak RSS is the peak of that run. ``start_*`` returns once the process serves
(the simulator prints its port; nginx and the gateway accept a connection, and the
gateway's log shows every worker listening). Everything each process writes goes to files
in the run's directory, kept for post-mortems.

nginx is the pass-through baseline: one worker (one gateway process is compared with one
nginx worker), ``proxy_buffering off`` so every upstream read is relayed at once, HTTP/1.1
keep-alive to the simulator with as many idle connections as the gateway's pool keeps.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from .loadgen import MODEL

REPO = Path(__file__).resolve().parent.parent
# How long a process may take to start serving, and to stop after SIGTERM.
START_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 15.0
POLL_S = 0.02
# The gateway's default upstream.pool_size; nginx keeps as many idle upstream connections.
UPSTREAM_IDLE_CONNECTIONS = 8
# Room for the 5000-stream run on every hop (each stream is two sockets in a proxy).
MAX_CONNECTIONS = 12_000
LISTEN_BACKLOG = 4096
# nginx's default worker_connections.
MIN_NGINX_CONNECTIONS = 512


class ServiceError(RuntimeError):
    """A process did not start, or died; the message says where its log is."""


@dataclass
class Service:
    """One started process (the root of its tree) and the port it serves."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def stop(self) -> int:
        """SIGTERM, wait, SIGKILL if needed; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _fd_hard_limit() -> int:
    import resource

    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def raise_fd_limit() -> int:
    """Raise this process's (and so its children's) open-file limit to the hard limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def _spawn(
    cmd: list[str],
    log: Path,
    stdout: int | IO[bytes] | None = None,
    cwd: Path = REPO,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """``cmd`` with its output in ``log``; ``env`` (default: this repository importable)
    is added to this process's environment."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as err:
        return subprocess.Popen(
            cmd,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else err,
            stderr=err,
            env={**os.environ, **(env if env is not None else {"PYTHONPATH": str(REPO)})},
        )


def _wait_port(service: Service, timeout: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.proc.poll() is not None:
            raise ServiceError(
                f"{service.name} exited with {service.proc.returncode}; see {service.log}"
            )
        try:
            with socket.create_connection(("127.0.0.1", service.port), timeout=1.0):
                return
        except OSError:
            time.sleep(POLL_S)
    service.stop()
    raise ServiceError(f"{service.name} did not listen within {timeout:g}s; see {service.log}")


# --pin: the CPUs each role runs on ("middle", "sim", "lg": taskset lists such as "2" or
# "4-5"); empty: wherever the scheduler puts them (the published 2-vCPU runs).
PINS: dict[str, str] = {}


def pinned(role: str, cmd: list[str]) -> list[str]:
    """``cmd`` on its role's CPUs (``--pin``), as ``taskset -c LIST`` runs it; every process
    it forks (nginx's worker, the gateway's workers) inherits them."""
    cpus = PINS.get(role)
    return ["taskset", "-c", cpus, *cmd] if cpus else cmd


def niced(cmd: list[str], nice: int) -> list[str]:
    """``cmd`` at a lower CPU priority (``nice`` > 0), as ``nice -n N`` runs it."""
    return ["nice", "-n", str(nice), *cmd] if nice else cmd


def start_simulator(run_dir: Path, rate: float, tokens: int, nice: int = 0) -> Service:
    """The simulator; ``nice``: its CPU priority lowered by that much (``--harness-nice``)."""
    log = run_dir / "simulator.log"
    cmd = [sys.executable, "-m", "bench.simproc", "--rate", str(rate), "--tokens", str(tokens)]
    return _start_announcing("simulator", pinned("sim", niced(cmd, nice)), log)


def _start_announcing(
    name: str, cmd: list[str], log: Path, env: dict[str, str] | None = None
) -> Service:
    """A process that prints ``{"port": P}`` on its first line once it listens."""
    proc = _spawn(cmd, log, stdout=subprocess.PIPE, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise ServiceError(f"{name} exited with {proc.returncode}; see {log}")
    return Service(name, proc, int(json.loads(line)["port"]), log)


def simulator_stats(sim: Service) -> dict[str, int]:
    """Stop the simulator and return the counters it prints on the way out."""
    sim.stop()
    assert sim.proc.stdout is not None
    lines = sim.proc.stdout.read().splitlines()
    sim.proc.stdout.close()
    return json.loads(lines[-1]) if lines else {}


def nginx_path() -> str | None:
    return shutil.which("nginx") or next(
        (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.access(p, os.X_OK)), None
    )


def nginx_version() -> str:
    binary = nginx_path()
    if binary is None:
        return "not installed"
    out = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False)
    return (out.stderr or out.stdout).strip().removeprefix("nginx version: ")


def nginx_conf(prefix: Path, port: int, upstream_port: int, connections: int) -> str:
    # Workers switch to "nobody" when started as root, and could not write under prefix.
    user = "user root;\n" if os.geteuid() == 0 else ""
    temp = "\n".join(
        f"    {kind}_temp_path {prefix}/tmp/{kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return f"""{user}worker_processes 1;
worker_rlimit_nofile {_fd_hard_limit()};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections {connections}; }}
http {{
    access_log {prefix}/access.log;
{temp}
    upstream ollama {{
        server 127.0.0.1:{upstream_port};
        keepalive {UPSTREAM_IDLE_CONNECTIONS};
    }}
    server {{
        listen 127.0.0.1:{port} backlog={LISTEN_BACKLOG};
        location / {{
            proxy_pass http://ollama;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host localhost;
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


def start_nginx(run_dir: Path, upstream_port: int, streams: int) -> Service:
    """nginx in front of the simulator, sized for ``streams`` (it preallocates per slot)."""
    binary = nginx_path()
    if binary is None:
        raise ServiceError("nginx is not installed (apt-get install nginx)")
    prefix = run_dir / "nginx"
    for sub in ("logs", "tmp"):
        (prefix / sub).mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = prefix / "nginx.conf"
    # Each stream holds two connections (client and upstream); nginx allocates every slot
    # up front, so a fixed large figure would inflate its RSS for small loads.
    # nginx also counts connections still closing, hence the headroom.
    connections = max(MIN_NGINX_CONNECTIONS, 4 * streams + UPSTREAM_IDLE_CONNECTIONS)
    conf.write_text(nginx_conf(prefix, port, upstream_port, connections))
    log = prefix / "stderr.log"
    cmd = [binary, "-p", f"{prefix}/", "-c", str(conf), "-g", "daemon off; master_process on;"]
    cmd = pinned("middle", cmd)
    service = Service("nginx", _spawn(cmd, log), port, log)
    _wait_port(service)
    return service


def start_floor_proxy(run_dir: Path, upstream_port: int, heads: str) -> Service:
    """``bench.floorproxy``, the least a Python proxy does (heads: ``scan`` or ``h11``)."""
    log = run_dir / f"floor-{heads}.log"
    cmd = pinned(
        "middle", [sys.executable, "-m", "bench.floorproxy", "--upstream", str(upstream_port)]
    )
    proc = _spawn([*cmd, "--heads", heads], log, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise ServiceError(f"floor proxy exited with {proc.returncode}; see {log}")
    service = Service(f"floor-{heads}", proc, int(json.loads(line)["port"]), log)
    _wait_port(service)
    return service


def gateway_config(
    run_dir: Path,
    port: int,
    upstream_port: int,
    max_concurrent: int = MAX_CONNECTIONS,
    queue_size: int = 0,
) -> str:
    """The benchmark's gateway: limits out of the way unless asked, logs in ``run_dir``."""
    log = run_dir / "gateway.log"
    return f"""server:
  host: 127.0.0.1
  port: {port}
  max_connections: {MAX_CONNECTIONS}
  timeout: 60s
model:
  endpoint: http://127.0.0.1:{upstream_port}
gateway:
  debug_port: 0
  max_concurrent: {max_concurrent}
  queue_size: {queue_size}
gpu:
  enabled: false
logging:
  level: info
  file: {log}
"""


def baseline_problem(source: Path) -> str | None:
    """Why ``source`` cannot be a ``--baseline`` checkout, or None when it can: the
    ``clawproxy`` package must sit at its root (``python -m clawproxy`` run there)."""
    if not (source / "clawproxy" / "__init__.py").is_file():
        return (
            f"--baseline {source}: no clawproxy/__init__.py there "
            "(give the root of a clawproxy checkout)"
        )
    return None


def start_gateway(
    run_dir: Path,
    upstream_port: int,
    workers: int = 1,
    max_concurrent: int = MAX_CONNECTIONS,
    queue_size: int = 0,
    source: Path | None = None,
) -> Service:
    """``python -m clawproxy --config ... --workers N``, ready when all N workers listen.

    ``source``: another checkout to run the ``clawproxy`` package from (``--baseline``):
    the same command and config, run in that directory with only it on ``PYTHONPATH``
    (``python -m`` puts the working directory first on ``sys.path``, ahead of this
    repository's editable install); every path handed to it is absolute.
    """
    port = free_port()
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "gateway.yaml"
    config.write_text(gateway_config(run_dir, port, upstream_port, max_concurrent, queue_size))
    # Readiness is read from this log: a previous run's lines must not count.
    (run_dir / "gateway.log").unlink(missing_ok=True)
    log = run_dir / "gateway.stderr.log"
    cmd = [sys.executable, "-m", "clawproxy", "--config", str(config), "--port", str(port)]
    cmd = pinned("middle", [*cmd, "--workers", str(workers)])
    if source is None:
        service = Service("gateway", _spawn(cmd, log), port, log)
    else:
        source = source.resolve()
        proc = _spawn(cmd, log, cwd=source, env={"PYTHONPATH": str(source)})
        service = Service("baseline", proc, port, log)
    _wait_port(service)
    _wait_workers(service, run_dir / "gateway.log", workers)
    return service


def _wait_workers(service: Service, log: Path, workers: int) -> None:
    # With SO_REUSEPORT a worker that is not listening yet gets no connections, so a load
    # started early would all land on the first worker.
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace") if log.exists() else ""
        if text.count("listening on http") >= workers:
            return
        if service.proc.poll() is not None:
            raise ServiceError(f"{service.name} exited with {service.proc.returncode}; see {log}")
        time.sleep(POLL_S)
    service.stop()
    raise ServiceError(
        f"{service.name} workers did not all listen within {START_TIMEOUT_S}s; see {log}"
    )


# LiteLLM imports for seconds before it listens.
LITELLM_START_TIMEOUT_S = 180.0


GOREFRAME_SOURCE = REPO / "bench" / "goreframe"


def go_version(binary: str) -> str:
    out = subprocess.run([binary, "version"], capture_output=True, text=True, check=False)
    return out.stdout.strip().removeprefix("go version ") or "unknown"


def build_goreframe(binary: str, out_dir: Path) -> Path:
    """``go build`` the Go re-framing comparator (standard library only, so offline)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "goreframe"
    env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    env.setdefault("GOCACHE", str(out_dir / "go-cache"))
    done = subprocess.run(
        [binary, "build", "-o", str(target), "."],
        cwd=GOREFRAME_SOURCE,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise ServiceError(f"go build of bench/goreframe failed: {done.stderr.strip()}")
    return target


def start_goreframe(run_dir: Path, binary: Path, upstream_port: int) -> Service:
    """The Go re-framing proxy in front of the simulator, on one OS thread for Go code
    (GOMAXPROCS=1: one core's worth, as nginx's one worker and the gateway's process)."""
    log = run_dir / "goreframe.log"
    cmd = pinned("middle", [str(binary), "-upstream", f"http://127.0.0.1:{upstream_port}"])
    return _start_announcing("goreframe", cmd, log, env={"GOMAXPROCS": "1"})


def litellm_config(upstream_port: int) -> str:
    """One model, served by LiteLLM's Ollama chat provider from the simulator."""
    return f"""model_list:
  - model_name: {MODEL}
    litellm_params:
      model: ollama_chat/{MODEL}
      api_base: http://127.0.0.1:{upstream_port}
litellm_settings:
  drop_params: true
  telemetry: false
general_settings:
  # No API keys on either proxy in the bench (the gateway's config sets none either).
  dangerously_permit_weak_or_unset_master_key: true
"""


def litellm_version(binary: str) -> str:
    """``litellm`` from the same environment as ``binary`` (its version, or "unknown")."""
    python = Path(binary).with_name("python")
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"]
    try:
        done = subprocess.run(probe, capture_output=True, text=True, timeout=60, check=False)
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def start_litellm(run_dir: Path, binary: str, upstream_port: int) -> Service:
    """The LiteLLM proxy, one worker, in front of the simulator (the issue's comparator)."""
    port = free_port()
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "litellm.yaml"
    config.write_text(litellm_config(upstream_port))
    log = run_dir / "litellm.log"
    cmd = pinned(
        "middle", [binary, "--config", str(config), "--host", "127.0.0.1", "--port", str(port)]
    )
    cmd += ["--num_workers", "1", "--telemetry", "False"]
    # Quiet logs, no calls home: neither belongs in a measurement. Its own environment,
    # without this repository on its import path.
    quiet = {"LITELLM_LOG": "ERROR", "LITELLM_TELEMETRY": "False"}
    service = Service("litellm", _spawn(cmd, log, cwd=run_dir, env=quiet), port, log)
    _wait_port(service, LITELLM_START_TIMEOUT_S)
    return service
