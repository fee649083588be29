"""The benchmark command: ``python -m bench`` (options: ``python -m bench --help``).

Theory of operation
-------------------
For each load (N concurrent streams of T tokens, paced at R tokens/s per stream like a
model, or unpaced), the three paths run in turns, one right after the other:

    direct   load generator -> simulator                  (Ollama's NDJSON)
    nginx    load generator -> nginx -> simulator         (NDJSON relayed unchanged)
    gateway  load generator -> clawproxy -> simulator     (re-framed into OpenAI SSE)
    baseline load generator -> clawproxy from --baseline DIR -> simulator (the same, as
             another checkout has it: the gateway before and after a change, side by side)
    litellm  load generator -> LiteLLM -> simulator       (--with-litellm, when installed)
    go-reframe  load generator -> Go proxy -> simulator   (--with-go, when Go is installed)

Each run starts its own simulator, middle process and load generator (``services``), so
they are separate processes on their own cores and no run inherits another's state. The
load generator reports tokens (in order, counted in the format it reads), TTFT and gaps;
around it the runner reads the CPU time of the middle process tree and of the simulator
(``proctree``), and the middle's RSS just after start and its peak. CPU per token is the
middle's CPU during the load divided by the tokens the client actually got.

Only runs of the same invocation are compared (added TTFT and gap against the direct run
of the same load, CPU against the nginx run of the same load): the machine is shared and
figures drift between invocations. The simulator's own CPU is shown for every run; where
it nears a full core it is the bottleneck, and "tokens got/expected" says if anything was
lost. ``--profile`` adds one more gateway run under py-spy (kept out of the table).

``--repeat N`` runs each load's paths in turns N times over (direct, nginx, gateway,
direct, nginx, gateway, ...), never one path's repeats back to back, each run with fresh
processes; the report shows one combined row per (load, path), medians across repeats,
with relative figures paired per repeat (``report.combine``). results.json keeps every
run as well as the combined rows.

Streams arrive at ``--arrivals`` per second (100: busy, steady traffic). Two things are
called TTFT and kept apart. "At N": while a paced load's N streams run (after the ramp),
the load generator sends ``--probes`` one-token requests, one every ``--probe-interval``
seconds; their first token is what a new user sees on a busy box. "Arrivals": the first
token of the load's own streams while they arrive. The burst load (``--burst`` streams at
``--burst-arrivals`` per second, 1000) is that second figure for a thundering herd; it is
its own row and gets no probes. The probe window (first probe to last) is left out of the
CPU per token figures, so the probes' requests do not count as the cost of tokens.

After the main runs, each paced load that fits twice over under ``--max-total-rate`` runs
paired (``run_pairs``): nginx and the gateway (and the baseline), each with N direct
streams interleaved in the same run, probes included, for the gap and TTFT targets (why:
``paired``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from . import paired, profile, report
from .proctree import cpu_seconds, cpu_ticks_seconds, peak_rss_bytes, rss_bytes, schedstat_available
from .report import MIB, RunResult
from .services import (
    PINS,
    REPO,
    Service,
    ServiceError,
    baseline_problem,
    build_goreframe,
    go_version,
    litellm_version,
    nginx_path,
    nginx_version,
    niced,
    pinned,
    raise_fd_limit,
    simulator_stats,
    start_floor_proxy,
    start_gateway,
    start_goreframe,
    start_litellm,
    start_nginx,
    start_simulator,
)

PATHS = ("direct", "nginx", "gateway")
# Not run unless named in --paths: bench/floorproxy.py, to see what the load does to the
# least a Python proxy does (heads scanned, or parsed by h11), next to the gateway.
FLOOR_PATHS = ("floor-scan", "floor-h11")
# The comparator that re-frames in Go as Ollama's own OpenAI layer does (bench/goreframe).
GO_PATH = "go-reframe"
# The gateway of another checkout (--baseline DIR), started and measured as "gateway" is.
BASELINE_PATH = "baseline"
# The paths whose clients speak OpenAI's API (SSE streams).
SSE_PATHS = frozenset({"gateway", BASELINE_PATH, "litellm", GO_PATH})
BIG_STREAMS = 5000
# The short-request load starts streams at this rate: busy, yet under a core's worth of
# request handling in every middle process.
SHORT_ARRIVALS_PER_S = 250.0
# The warm-up stream before each measured load: enough to import, connect and JIT nothing.
WARM_UP_TOKENS = 2
BENCH_DIR = Path(__file__).resolve().parent
# A client aborts a run that has not ended this long after its slowest stream should have.
DEADLINE_SLACK_S = 30.0
# Probes start this long after the ramp, and the probe window must end this long before
# the first stream does (else the load gets no probes): all N streams are running.
PROBE_LEAD_S = 0.5
PROBE_TAIL_S = 0.5
# Extra time the runner gives the load generator process beyond its own deadline.
LOADGEN_EXIT_SLACK_S = 30.0


@dataclass(frozen=True)
class Load:
    streams: int
    rate: float  # tokens/s per stream; 0 = as fast as the simulator goes
    # Overrides of the run's --tokens and --arrivals (the short-request load uses both).
    tokens: int | None = None
    arrivals: float | None = None
    # The burst load: streams arriving at --burst-arrivals, measured by their own TTFT.
    burst: bool = False

    @property
    def label(self) -> str:
        if self.tokens == 1:
            return f"{self.streams} x 1 token"
        if self.burst:
            return f"{self.streams} @ {self.rate:g}/s burst"
        return f"{self.streams} @ {self.rate:g}/s" if self.rate > 0 else f"{self.streams} unpaced"

    @property
    def slug(self) -> str:
        if self.tokens == 1:
            return f"{self.streams}x1token"
        if self.burst:
            return f"{self.streams}x{self.rate:g}burst"
        return f"{self.streams}x{self.rate:g}" if self.rate > 0 else f"{self.streams}xmax"


@dataclass(frozen=True)
class Settings:
    out: Path
    tokens: int
    arrivals: float
    workers: int
    # One-token requests sent while a paced load runs (0: none), and their spacing.
    probes: int = 0
    probe_interval: float = 0.05
    # --repeat: runs per (load, path); with more than one, each run's raw outputs go to a
    # directory of its own (..-r1, ..-r2, ...).
    repeats: int = 1
    # The litellm executable of the optional comparator path (--with-litellm).
    litellm: str | None = None
    # --harness-nice: the simulator's and the load generator's CPU priority lowered by this.
    nice: int = 0
    # The built Go re-framing proxy of the optional comparator path (--with-go).
    goreframe: Path | None = None
    # The checkout whose clawproxy the baseline path runs (--baseline).
    baseline: Path | None = None


PIN_ROLES = ("middle", "sim", "lg")


def pin_layout(text: str) -> dict[str, str]:
    """``--pin middle=2,sim=4-5,lg=6-7``: each role's CPUs, as taskset lists them."""
    layout: dict[str, str] = {}
    for part in filter(None, text.split(",")):
        role, _, cpus = part.partition("=")
        if role not in PIN_ROLES or not re.fullmatch(r"[0-9]+(-[0-9]+)?(:[0-9]+)?", cpus):
            raise argparse.ArgumentTypeError(
                f"{part!r}: expected ROLE=CPUS, ROLE one of {PIN_ROLES}"
            )
        layout[role] = cpus
    return layout


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Streaming load through direct, nginx and clawproxy paths, side by side.",
    )
    ints = _int_list
    parser.add_argument("--paced", type=ints, default=[1, 100, 200, 1000], help="stream counts")
    parser.add_argument("--rate", type=float, default=20.0, help="paced tokens/s per stream")
    parser.add_argument("--unpaced", type=ints, default=[1, 100], help="stream counts, unpaced")
    parser.add_argument(
        "--max-total-rate",
        type=float,
        default=10_000.0,
        help="cap on streams x rate: big paced loads run slower per stream (2 cores)",
    )
    parser.add_argument("--big", action="store_true", help="add 5000 paced streams (slow)")
    parser.add_argument(
        "--short", type=int, default=1000, help="one-token streams: per-request cost (0: skip)"
    )
    parser.add_argument("--tokens", type=int, default=200, help="tokens per stream")
    parser.add_argument(
        "--paths",
        help=f"subset of {','.join(PATHS)} (the default), and {' or '.join(FLOOR_PATHS)}, "
        f"{BASELINE_PATH} (bench/README.md)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        metavar="DIR",
        help=f"add {BASELINE_PATH}: the gateway run from the clawproxy package of the checkout "
        "DIR, beside this one's (after gateway unless --paths says where)",
    )
    parser.add_argument("--workers", type=int, default=1, help="gateway (and baseline) --workers")
    parser.add_argument(
        "--harness-nice",
        type=int,
        default=0,
        metavar="N",
        help="run the simulator and the load generator at nice N (0: as the middle; see README)",
    )
    parser.add_argument(
        "--pin",
        type=pin_layout,
        default={},
        metavar="ROLE=CPUS,...",
        help="run each role on its own CPUs with taskset, e.g. middle=2,sim=4-5,lg=6-7 "
        "(roles: middle, sim, lg; bench/pinned-ttft.sh picks a layout)",
    )
    parser.add_argument(
        "--with-litellm",
        action="store_true",
        help="add the LiteLLM proxy (1 worker) as a path, when installed (bench/README.md)",
    )
    parser.add_argument(
        "--litellm", help="the litellm executable (default: the one on PATH); with --with-litellm"
    )
    parser.add_argument(
        "--with-go",
        action="store_true",
        help=f"add {GO_PATH}, Ollama-style re-framing in Go, when Go is installed (README)",
    )
    parser.add_argument("--go", help="the go executable (default: the one on PATH); with --with-go")
    parser.add_argument(
        "--arrivals", type=float, default=100.0, help="new streams per second (the ramp)"
    )
    parser.add_argument(
        "--probes", type=int, default=40, help="new one-token requests while a paced load runs"
    )
    parser.add_argument("--probe-interval", type=float, default=0.05, help="seconds between probes")
    parser.add_argument(
        "--burst", type=int, default=100, help="streams of the burst load (0: skip)"
    )
    parser.add_argument(
        "--burst-arrivals", type=float, default=1000.0, help="new streams per second, burst"
    )
    parser.add_argument(
        "--paired",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run each paced load through each middle and direct at once (gap, TTFT)",
    )
    parser.add_argument("--profile", action="store_true", help="py-spy the gateway afterwards")
    parser.add_argument(
        "--profile-streams", type=int, default=0, help="load to profile (default: largest paced)"
    )
    parser.add_argument(
        "--repeat",
        type=_positive_int,
        default=1,
        help="runs per load and path, interleaved; figures are medians (3 for published ones)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny load, for the smoke test")
    parser.add_argument("--out", type=Path, help="raw outputs (default bench/out)")
    parser.add_argument("--results", type=Path, help="RESULTS.md to write")
    parser.add_argument("--chart", type=Path, help="PNG chart to write")
    parser.add_argument(
        "--replot",
        type=Path,
        metavar="RESULTS_JSON",
        help="only draw the chart (--chart) again from a run's results.json",
    )
    parser.add_argument(
        "--limit-check", action="store_true", help="workers vs max_concurrent instead (limits.py)"
    )
    parser.add_argument(
        "--nodes",
        type=int,
        metavar="N",
        help="node pool instead: routing cost and throughput with 1..N nodes (nodes.py)",
    )
    args = parser.parse_args(argv)
    PINS.clear()
    PINS.update(args.pin)
    if args.quick:
        # A tiny load by default; load options given with --quick still apply.
        parser.set_defaults(paced=[3], unpaced=[2], tokens=13, rate=10.0, short=3)
        parser.set_defaults(probes=3, burst=3)
        args = parser.parse_args(argv)
        args.big = args.profile = False
    default_out = BENCH_DIR / "out" / ("quick" if args.quick else "full")
    args.out = (args.out or default_out).resolve()
    # A quick or custom run must not overwrite the published results.
    published = not args.quick and args.out == default_out
    args.results = args.results or (
        BENCH_DIR / "RESULTS.md" if published else args.out / "RESULTS.md"
    )
    args.chart = args.chart or (
        BENCH_DIR / "results.png" if published else args.out / "results.png"
    )
    return args


def _int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def paced_rate(args: argparse.Namespace, streams: int) -> float:
    """Tokens/s per stream: ``--rate``, lowered so that all streams together stay under
    ``--max-total-rate`` (the simulator costs tens of µs per token, on shared cores)."""
    rate: float = min(args.rate, args.max_total_rate / streams)
    return rate


def plan(args: argparse.Namespace) -> list[Load]:
    counts = [*args.paced, *([BIG_STREAMS] if args.big else [])]
    loads = [Load(n, paced_rate(args, n)) for n in counts]
    if args.burst:
        rate = paced_rate(args, args.burst)
        loads.append(Load(args.burst, rate, arrivals=args.burst_arrivals, burst=True))
    loads += [Load(n, 0.0) for n in args.unpaced]
    if args.short:
        # One-token streams: what a request costs apart from its tokens.
        loads.append(Load(args.short, 0.0, tokens=1, arrivals=SHORT_ARRIVALS_PER_S))
    return loads


def ramp_s(settings: Settings, load: Load) -> float:
    """Seconds over which the load's streams start (0 for one stream)."""
    return load.streams / (load.arrivals or settings.arrivals) if load.streams > 1 else 0.0


def probe_start(settings: Settings, load: Load) -> float | None:
    """When the probes start (seconds after the first stream), or None: no probes.

    Only paced loads of many tokens get probes (not the burst), starting PROBE_LEAD_S
    after the ramp, and only if the whole window ends PROBE_TAIL_S before the first
    stream is due to end, so that every probe meets all N streams running.
    """
    if settings.probes <= 0 or load.rate <= 0 or load.tokens == 1 or load.burst:
        return None
    start = ramp_s(settings, load) + PROBE_LEAD_S
    window_end = start + settings.probes * settings.probe_interval
    stream_s = (load.tokens or settings.tokens) / load.rate
    return start if window_end <= stream_s - PROBE_TAIL_S else None


def run_loadgen(
    settings: Settings,
    load: Load,
    port: int,
    fmt: str,
    cpu_pids: Sequence[int] = (),
    pair_port: int | None = None,
    pair_format: str = "ndjson",
) -> dict[str, object]:
    """Run the load generator; ``cpu_pids``: process trees it reads around the probes;
    ``pair_port``: N more streams straight to that simulator port (``pair_format``), in
    the same run."""
    tokens = load.tokens or settings.tokens
    ramp = ramp_s(settings, load)
    stream_s = tokens / load.rate if load.rate > 0 else 0.0
    deadline = ramp + 3 * stream_s + DEADLINE_SLACK_S
    cmd = [sys.executable, "-m", "bench.loadgen", "--port", str(port), "--format", fmt]
    cmd = pinned("lg", niced(cmd, settings.nice))
    cmd += ["--streams", str(load.streams), "--tokens", str(tokens)]
    probes_at = probe_start(settings, load)
    if probes_at is not None:
        cmd += ["--probes", str(settings.probes), "--probe-start", f"{probes_at:.3f}"]
        cmd += ["--probe-interval", f"{settings.probe_interval:g}"]
        cmd += [arg for pid in cpu_pids for arg in ("--cpu-pid", str(pid))]
        window_end = probes_at + settings.probes * settings.probe_interval
        deadline = max(deadline, window_end + DEADLINE_SLACK_S)
    if pair_port is not None:
        cmd += ["--pair-port", str(pair_port), "--pair-format", pair_format]
    cmd += ["--ramp", f"{ramp:.3f}", "--deadline", f"{deadline:.1f}"]
    done = subprocess.run(
        cmd,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=deadline + LOADGEN_EXIT_SLACK_S,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        raise ServiceError(f"load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _ms(value: object) -> float | None:
    return None if value is None else float(value) * 1000.0  # type: ignore[arg-type]


def _per_token(seconds: float, tokens: int) -> float | None:
    return seconds / tokens * 1e6 if tokens else None


def start_middle(
    settings: Settings, run_dir: Path, path: str, sim: Service, streams: int
) -> Service:
    """The process between the load generator and the simulator on ``path``."""
    if path == "nginx":
        return start_nginx(run_dir, sim.port, streams)
    if path == "litellm":
        assert settings.litellm is not None
        return start_litellm(run_dir, settings.litellm, sim.port)
    if path in FLOOR_PATHS:
        return start_floor_proxy(run_dir, sim.port, path.removeprefix("floor-"))
    if path == GO_PATH:
        assert settings.goreframe is not None
        return start_goreframe(run_dir, settings.goreframe, sim.port)
    if path == BASELINE_PATH:
        assert settings.baseline is not None
        return start_gateway(run_dir, sim.port, settings.workers, source=settings.baseline)
    return start_gateway(run_dir, sim.port, settings.workers)


def wire_format(path: str) -> str:
    """What the load generator speaks on ``path``: OpenAI's SSE through the gateway (and
    the baseline), LiteLLM and go-reframe, Ollama's NDJSON straight to the simulator and
    through nginx."""
    return "sse" if path in SSE_PATHS else "ndjson"


def warm_up(settings: Settings, load: Load, port: int, fmt: str) -> None:
    """One short stream first, unmeasured, no probes: one-time costs (lazy imports, the
    first upstream connection, thread pools) are start-up, not per-request latency."""
    warm = dataclasses.replace(settings, tokens=WARM_UP_TOKENS, probes=0, repeats=1)
    run_loadgen(warm, Load(1, load.rate), port, fmt)


def run_one(
    settings: Settings, load: Load, path: str, spy: Path | None = None, repeat: int = 1
) -> RunResult:
    """One path under one load, with fresh processes; ``spy``: record a py-spy profile;
    ``repeat``: which of the ``settings.repeats`` runs of this (load, path) it is."""
    tag = f"-r{repeat}" if settings.repeats > 1 else ""
    run_dir = settings.out / f"{load.slug}-{path}{tag}"
    sim = start_simulator(run_dir, load.rate, load.tokens or settings.tokens, settings.nice)
    middle: Service | None = None
    sim_stats: dict[str, int] = {}
    try:
        if path != "direct":
            middle = start_middle(settings, run_dir, path, sim, load.streams)
        idle_rss = rss_bytes(middle.pid) if middle else None
        port = middle.port if middle else sim.port
        fmt = wire_format(path)
        warm_up(settings, load, port, fmt)
        spy_proc = profile.record(middle.pid, spy, settings.workers > 1) if spy and middle else None
        mid0 = (cpu_seconds(middle.pid), cpu_ticks_seconds(middle.pid)) if middle else (0.0, 0.0)
        sim0 = cpu_seconds(sim.pid)
        started = time.monotonic()
        lg = run_loadgen(settings, load, port, fmt, [sim.pid, *([middle.pid] if middle else [])])
        wall = time.monotonic() - started
        sim_cpu = cpu_seconds(sim.pid) - sim0
        mid_cpu = mid_ticks = None
        peak = None
        if middle:
            mid_cpu = cpu_seconds(middle.pid) - mid0[0]
            mid_ticks = cpu_ticks_seconds(middle.pid) - mid0[1]
            peak = peak_rss_bytes(middle.pid)
        if spy_proc is not None:
            profile.stop(spy_proc)
    finally:
        if middle is not None:
            middle.stop()
        sim_stats = simulator_stats(sim)
    tokens = int(lg["tokens"])  # type: ignore[call-overload]
    lg_cpu = float(lg["loadgen_cpu_s"])  # type: ignore[arg-type]
    # The probe window is left out of the per-token CPU (probes are requests, not tokens).
    cpu_tokens, core_wall, extra = tokens, wall, {}
    window = lg.get("probe_window")
    if isinstance(window, dict):
        cpu_s, ticks_s = window["cpu_s"], window["cpu_ticks_s"]
        cpu_tokens -= int(window["tokens"])
        core_wall -= float(window["s"])
        lg_cpu -= float(window["loadgen_cpu_s"])
        sim_cpu -= float(cpu_s[str(sim.pid)])
        if middle is not None and mid_cpu is not None and mid_ticks is not None:
            mid_cpu -= float(cpu_s[str(middle.pid)])
            mid_ticks -= float(ticks_s[str(middle.pid)])
        extra = {"probe_window_s": window["s"], "probe_window_tokens": window["tokens"]}
    return RunResult(
        label=load.label,
        streams=load.streams,
        rate=load.rate,
        path=path,
        tokens=tokens,
        expected_tokens=int(lg["expected_tokens"]),  # type: ignore[call-overload]
        completed=int(lg["completed"]),  # type: ignore[call-overload]
        outcomes=dict(lg["outcomes"]),  # type: ignore[call-overload]
        out_of_order=int(lg["out_of_order"]),  # type: ignore[call-overload]
        tokens_per_s=float(lg["tokens_per_s"]),  # type: ignore[arg-type]
        wall_s=wall,
        ttft_p50_ms=_ms(lg["ttft_p50_s"]),
        ttft_p99_ms=_ms(lg["ttft_p99_s"]),
        gap_p50_ms=_ms(lg["gap_p50_s"]),
        gap_p99_ms=_ms(lg["gap_p99_s"]),
        gap_max_ms=_ms(lg["gap_max_s"]),
        sim_cpu_us=_per_token(sim_cpu, cpu_tokens),
        sim_core_pct=sim_cpu / core_wall * 100.0 if core_wall > 0 else 0.0,
        loadgen_cpu_us=_per_token(lg_cpu, cpu_tokens),
        mid_cpu_us=None if mid_cpu is None else _per_token(mid_cpu, cpu_tokens),
        mid_cpu_ticks_us=None if mid_ticks is None else _per_token(mid_ticks, cpu_tokens),
        rss_idle_mib=None if idle_rss is None else idle_rss / MIB,
        rss_peak_mib=None if peak is None else peak / MIB,
        sim_max_active=int(sim_stats.get("max_active_streams", 0)),
        sim_connections=int(sim_stats.get("connections_total", 0)),
        arrivals=load.arrivals or settings.arrivals,
        burst=load.burst,
        probes=int(lg.get("probes") or 0),  # type: ignore[call-overload]
        probes_completed=int(lg.get("probes_completed") or 0),  # type: ignore[call-overload]
        probe_outcomes=dict(lg.get("probe_outcomes") or {}),  # type: ignore[call-overload]
        probe_ttft_p50_ms=_ms(lg.get("probe_ttft_p50_s")),
        probe_ttft_p99_ms=_ms(lg.get("probe_ttft_p99_s")),
        extra=extra,
        repeat=repeat,
    )


def run_paired(settings: Settings, load: Load, path: str, repeat: int) -> paired.PairedRun:
    """``load`` through ``path`` and straight to the simulator at once (``paired``), with
    fresh processes; probes as in ``run_one``, on both sides."""
    run_dir = settings.out / f"{load.slug}-{path}-paired-r{repeat}"
    sim = start_simulator(run_dir, load.rate, load.tokens or settings.tokens, settings.nice)
    middle: Service | None = None
    try:
        middle = start_middle(settings, run_dir, path, sim, load.streams)
        fmt = wire_format(path)
        warm_up(settings, load, middle.port, fmt)
        # Probes too, where the load gets them: the middle's and direct's, interleaved.
        lg = run_loadgen(settings, load, middle.port, fmt, pair_port=sim.port)
    finally:
        if middle is not None:
            middle.stop()
        simulator_stats(sim)
    direct = lg["pair"]
    assert isinstance(direct, dict)
    return paired.PairedRun(
        label=load.label,
        streams=load.streams,
        rate=load.rate,
        path=path,
        repeat=repeat,
        gap_p99_ms=_ms(lg["gap_p99_s"]),
        direct_gap_p99_ms=_ms(direct["gap_p99_s"]),
        tokens=int(lg["tokens"]),  # type: ignore[call-overload]
        direct_tokens=int(direct["tokens"]),
        expected_tokens=int(lg["expected_tokens"]),  # type: ignore[call-overload]
        probes=int(lg.get("probes") or 0),  # type: ignore[call-overload]
        probes_completed=int(lg.get("probes_completed") or 0),  # type: ignore[call-overload]
        direct_probes_completed=int(direct.get("probes_completed") or 0),
        probe_ttft_p50_ms=_ms(lg.get("probe_ttft_p50_s")),
        direct_probe_ttft_p50_ms=_ms(direct.get("probe_ttft_p50_s")),
    )


def run_pairs(
    args: argparse.Namespace, settings: Settings, paths: Sequence[str]
) -> list[paired.PairedRun]:
    """The paired runs: each pairable paced load, each middle path, ``--repeat`` times
    (in turns, like the main runs)."""
    # nginx is the reference, the floor proxies a yardstick when named, the baseline the
    # gateway's own before; LiteLLM's gaps are not a target, and its runs are slow.
    middles = [p for p in paths if p in ("nginx", *FLOOR_PATHS, GO_PATH, "gateway", BASELINE_PATH)]
    loads = [
        load
        for load in plan(args)
        if not load.burst
        and load.tokens is None
        and paired.pairable(load.streams, load.rate, args.max_total_rate)
    ]
    results = []
    for load in loads:
        for repeat in range(1, args.repeat + 1):
            for path in middles:
                one = run_paired(settings, load, path, repeat)
                results.append(one)
                turn = f" [{repeat}/{args.repeat}]" if args.repeat > 1 else ""
                print(
                    f"{load.label:>18} {path:>8} paired{turn}: {one.tokens}+"
                    f"{one.direct_tokens}/{2 * one.expected_tokens} tokens, "
                    f"gap p99 {report.fmt(one.added_ms, '+.2f')} ms, TTFT p50 at N "
                    f"{report.fmt(one.ttft_added_ms, '+.2f')} ms against direct",
                    flush=True,
                )
    return results


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "not installed"


def _git(*args: str, cwd: Path = REPO) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def revision(checkout: Path = REPO) -> str:
    """The commit measured, ``(with uncommitted changes)`` where the tree differs from it.
    Read when the run starts: by its end the run has written its own chart into the tree.
    ``checkout``: another one (``--baseline``); "no git checkout" where it is none."""
    if checkout != REPO and not (checkout / ".git").exists():
        return "no git checkout"
    dirty = " (with uncommitted changes)" if _git("status", "--porcelain", cwd=checkout) else ""
    return (_git("rev-parse", "--short", "HEAD", cwd=checkout) or "?") + dirty


def header(
    args: argparse.Namespace,
    argv: Sequence[str],
    load_before: str,
    measured: str,
    litellm: str | None = None,
    go: str | None = None,
    baseline: tuple[Path, str] | None = None,
) -> str:
    """``measured``: ``revision()`` at the start of the run; ``litellm``, ``go``: the
    executables of the optional comparator paths, when they ran; ``baseline``: the
    checkout of the baseline path and its revision, when it ran."""
    cpu_source = (
        "schedstat (ns)" if schedstat_available() else "/proc/<pid>/stat utime+stime (ticks)"
    )
    command = " ".join(["python -m bench", *argv])
    repeats = (
        f"{args.repeat} runs per load and path, the paths in turns (direct, nginx,\n"
        "  gateway, direct, ...), each with fresh processes. Figures are medians across the\n"
        "  repeats; x nginx, +TTFT and +gap are medians of per-repeat differences against the\n"
        '  same repeat\'s nginx or direct run; "median (min-max)" shows the range across\n'
        "  repeats for CPU µs/tok and +TTFT p50 at N; tokens got/expected is the worst repeat\n"
        "  (`!` if any lost anything) and RSS the highest; every run is in results.json"
        if args.repeat > 1
        else "1 run per load and path (figures from single runs; `--repeat 3` gives medians)"
    )
    probes = (
        f"{args.probes} probe requests of one token, one every {args.probe_interval:g} s, "
        f"starting {PROBE_LEAD_S:g} s\n  after a paced load's ramp, while its N streams run "
        "(none where the window does not fit);\n  the probe window is left out of CPU per token"
        if args.probes
        else "no probes (--probes 0)"
    )
    burst = (
        f"the burst row is {args.burst} streams\n  arriving at {args.burst_arrivals:g} per "
        "second (no probes)"
        if args.burst
        else "no burst load (--burst 0)"
    )
    comparators = ""
    if litellm:
        comparators = (
            f"\n- LiteLLM {litellm_version(litellm)}: the proxy with one worker "
            "(`--num_workers 1`), provider\n  `ollama_chat` pointed at the simulator, "
            "`LITELLM_LOG=ERROR`, telemetry off"
        )
    if go:
        comparators += (
            f"\n- {GO_PATH}: bench/goreframe built with Go {go_version(go)}, `GOMAXPROCS=1`"
        )
    if baseline:
        comparators += (
            f"\n- {BASELINE_PATH}: the gateway as above, its clawproxy package from "
            f"{baseline[0]} ({baseline[1]})"
        )
    pairing = (
        "every paced load whose doubled token rate fits the cap also ran paired:\n  N "
        "streams (and probes) through each middle and N direct in one run (gap p99 and\n"
        "  TTFT at N, see below)"
        if args.paired
        else "no paired runs (--no-paired)"
    )
    pins = ", ".join(f"{role} on CPUs {cpus}" for role, cpus in args.pin.items())
    harness = (
        f"the simulator and the load generator ran at nice {args.harness_nice}, the middle "
        "at 0\n  (`--harness-nice`: the harness yields the CPU to the process measured)"
        if args.harness_nice
        else "all processes at the same priority (no `--harness-nice`)"
    )
    if args.pin:
        harness = f"pinned with taskset ({pins}); {harness}"
    return f"""# Benchmark results

Written by `{command}` on {time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}.
Regenerate with the same command; see bench/README.md for what each column means.

- Machine: {_cpu_model()}, {os.cpu_count()} logical CPUs shared with other work
  (load average {load_before} before the run, {_loadavg()} after), Linux {platform.release()}
- Versions: Python {platform.python_version()}, uvloop {_version("uvloop")}, h11 \
{_version("h11")}, orjson {_version("orjson")}, nginx {nginx_version()}, clawproxy \
{_version("clawproxy")} at {measured}
- Load: {args.tokens} tokens per stream; paced loads at {args.rate:g} tokens/s per stream
  (lowered so that streams x rate <= {args.max_total_rate:g}), unpaced as fast as the
  simulator goes; streams arrive at {args.arrivals:g} per second, one connection each,
  after one unmeasured warm-up stream per run
- TTFT "at N": {probes}
- TTFT "(arrivals)": over the load's own streams as they arrive; {burst}
- Gateway: {args.workers} worker(s); nginx: 1 worker, `proxy_buffering off`, upstream
  keep-alive 8 (as the gateway's pool); each run starts fresh processes{comparators}
- Gaps: {pairing}
- Harness priority: {harness}
- CPU: middle process tree, {cpu_source}; the tick-based figure is in results.json too
- Repeats: {repeats}
- All comparisons are between runs of this one invocation, in turns per load."""


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.replot:
        # The chart again from a stored run, without running anything.
        runs = report.runs_from_json(json.loads(args.replot.read_text()))
        chart = report.chart(report.combine(runs), args.chart)
        print(f"wrote {chart}" if chart else "matplotlib is not installed: no chart")
        return 0 if chart else 1
    if args.limit_check:
        from . import limits

        return limits.main(args)
    if args.nodes is not None:
        from . import nodes

        return nodes.main(args, argv)
    raise_fd_limit()
    paths = [p for p in (",".join(PATHS) if args.paths is None else args.paths).split(",") if p]
    unknown = sorted(set(paths) - {*PATHS, *FLOOR_PATHS, "litellm", GO_PATH, BASELINE_PATH})
    if unknown:
        print(f"unknown --paths: {', '.join(unknown)} (see --help)", file=sys.stderr)
        return 2
    baseline = None
    if args.baseline is not None:
        baseline = args.baseline.resolve()
        problem = baseline_problem(baseline)
        if problem:
            print(problem, file=sys.stderr)
            return 2
        if args.paths is None:
            # Right after the gateway, so the two run one after the other in every turn.
            at = paths.index("gateway") + 1 if "gateway" in paths else len(paths)
            paths.insert(at, BASELINE_PATH)
        elif BASELINE_PATH not in paths:
            print(f"--paths does not name {BASELINE_PATH}: --baseline {baseline} is not run")
            baseline = None
    elif BASELINE_PATH in paths:
        print(f"--paths names {BASELINE_PATH} but no --baseline DIR is given", file=sys.stderr)
        return 2
    if "nginx" in paths and nginx_path() is None:
        print("nginx is not installed: the nginx path is skipped (apt-get install nginx)")
        paths.remove("nginx")
    litellm = None
    if args.with_litellm:
        # shutil.which also checks a given path: it must be an executable file.
        litellm = shutil.which(args.litellm or "litellm")
        if litellm is None:
            print("litellm is not installed: the litellm path is skipped (see bench/README.md)")
        elif "litellm" not in paths:
            paths.append("litellm")
    if args.with_go and GO_PATH not in paths:
        paths.append(GO_PATH)
    goreframe = go = None
    if GO_PATH in paths:
        go = shutil.which(args.go or "go")
        if go is None:
            print(f"go is not installed: the {GO_PATH} path is skipped (apt-get install golang-go)")
            paths.remove(GO_PATH)
        else:
            try:
                goreframe = build_goreframe(go, args.out / "goreframe")
            except ServiceError as exc:
                print(f"{exc}: the {GO_PATH} path is skipped")
                paths.remove(GO_PATH)
                go = None
    settings = Settings(
        args.out,
        args.tokens,
        args.arrivals,
        args.workers,
        args.probes,
        args.probe_interval,
        args.repeat,
        litellm,
        args.harness_nice,
        goreframe,
        baseline,
    )
    settings.out.mkdir(parents=True, exist_ok=True)
    load_before = _loadavg()
    measured = revision()
    baseline_at = None if baseline is None else (baseline, revision(baseline))
    results: list[RunResult] = []
    for load in plan(args):
        # In turns, repeat after repeat: neighbouring runs share the machine's state, and
        # each relative figure pairs runs of the same repeat.
        for repeat in range(1, args.repeat + 1):
            for path in paths:
                result = run_one(settings, load, path, repeat=repeat)
                results.append(result)
                probes = (
                    f", {result.probes_completed}/{result.probes} probes" if result.probes else ""
                )
                turn = f" [{repeat}/{args.repeat}]" if args.repeat > 1 else ""
                print(
                    f"{load.label:>18} {path:>8}{turn}: {result.tokens}/"
                    f"{result.expected_tokens} tokens, {result.wall_s:.1f}s{probes}",
                    flush=True,
                )
    pairs = run_pairs(args, settings, paths) if args.paired else []
    pair_rows = paired.combine(pairs)
    paired_gap = paired.gap_line(pair_rows)
    paired_ttft = paired.ttft_line(pair_rows, report.ADDED_TTFT_STREAMS)
    combined = report.combine(results)
    summary = report.to_json(results, combined)
    summary["paired"] = paired.to_json(pairs, pair_rows)
    (settings.out / "results.json").write_text(json.dumps(summary, indent=1))
    # The profiled runs are about tokens and requests of the load itself: no probes.
    # Once, whatever --repeat says.
    profile_md = (
        run_profile(args, dataclasses.replace(settings, probes=0, repeats=1))
        if args.profile
        else None
    )
    print()
    print(report.text_table(combined))
    if pair_rows:
        print()
        print(paired.text_table(pair_rows))
    print()
    print(report.budget_text(report.budget(combined, paired_gap, paired_ttft)))
    further = report.further_checks(combined)
    if further:
        print("beyond the issue:")
        print(report.budget_text(further))
    chart = report.chart(combined, args.chart)
    report.write_results(
        args.results,
        combined,
        header(args, argv, load_before, measured, settings.litellm, go, baseline_at),
        profile_md,
        chart,
        paired.markdown(pair_rows) if pair_rows else None,
        paired_gap,
        paired_ttft,
    )
    print(f"\nwrote {args.results}" + (f" and {chart}" if chart else ""))
    return 0


def run_profile(args: argparse.Namespace, settings: Settings) -> str | None:
    """Two extra gateway runs under py-spy: the largest paced load (where per-token work
    dominates) and the one-token streams (where per-request work does)."""
    if profile.py_spy_path() is None:
        print("py-spy is not installed: no profile (pip install -e '.[bench]')")
        return None
    streams = args.profile_streams or max(args.paced, default=100)
    loads = [("Per token", Load(streams, paced_rate(args, streams)))]
    if args.short:
        short = Load(args.short, 0.0, tokens=1, arrivals=SHORT_ARRIVALS_PER_S)
        loads.append(("Per request", short))
    sections = []
    for title, load in loads:
        out = settings.out / f"gateway-{load.slug}.speedscope.json"
        out.unlink(missing_ok=True)
        result = run_one(settings, load, "gateway", spy=out)
        if not out.exists():
            print(f"py-spy wrote no profile; see {out.with_suffix('.log')}")
            continue
        note = (
            f"### {title}: {load.label}\n\n{result.tokens}/{result.expected_tokens} tokens, "
            f"{result.mid_cpu_us or 0:.1f} µs of gateway CPU per token while sampled "
            "(py-spy's reading costs a little: not a table figure)."
        )
        sections.append(note + "\n\n" + profile.markdown(profile.summarize(out), _rel(out)))
    return "\n\n".join(sections) or None


def _rel(path: Path) -> Path:
    try:
        return path.resolve().relative_to(REPO)
    except ValueError:
        return path


if __name__ == "__main__":
    sys.exit(main())
