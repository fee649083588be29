"""The node pool, measured: ``python -m bench --nodes N`` (N >= 2; ``--quick``: seconds).

Theory of operation: two questions about the gateway's ``nodes:`` list, each answered in
one invocation, side by side, with fresh processes for every run (``services``), CPU read
from /proc (``proctree``) and load from the bench's own generator (``run.run_loadgen``).
The Ollama nodes are one ``python -m clawproxy.simulator --nodes N --uvloop --numbered``
process (N listeners on one event loop: N simulator processes would take N of this box's
two cores' worth of scheduling from the gateway).

1. Routing cost. ``--short`` one-token requests (1000; one connection each, arriving at
   ``run.SHORT_ARRIVALS_PER_S``, as the main bench's per-request load), the simulator
   unpaced, through (a) the gateway with its plain ``model.endpoint`` (no ``nodes:``: one
   node, named "default") and (b) the same build with a ``nodes:`` list of the N
   simulated nodes, uncapped (each node's ``max_concurrent`` is the bench's large
   ``gateway.max_concurrent``). Figure: the gateway's CPU time (its process tree,
   schedstat) during the load divided by the requests completed, after a few unmeasured
   requests. Every node serves the model warm, as in a pool in service: each simulated
   node answers one request straight away before the gateway starts, and the pool's runs
   wait until the gateway's first discovery (``/api/ps``, one probe interval after its
   first request; ``GET /nodes`` on its admin port) shows it on all of them. Without
   that, the router's "warm first" rule would send everything to the node the warm-up
   happened to reach first. Both gateways run at once, in front of the same simulator,
   and one load generator interleaves their requests (``loadgen --pair-port``, as the
   bench's paired runs): separate runs of the same gateway here differ by +-100 µs per
   request (the shared cores' state), five times the target, and in one run that noise
   hits both alike. ``ROUTING_ROUNDS`` rounds, fresh processes each, which one leads
   alternating; the table shows medians and ranges, and the difference is the median of
   the per-round differences (b - a), judged against the target of ``TARGET_US`` µs per
   request. The pool's health probe (one ``GET
   /api/version`` per node every 5 s; a lone node is not probed) runs during (b), as it
   would in production, so its cost is in the difference.
2. Throughput scaling. With 1, 2, ..., N nodes in a ``nodes:`` list, each capped at
   ``CAP`` generations (``max_concurrent``), the simulator paced at ``RATE`` tokens/s and
   ``TOKENS`` tokens per request, so that each node serves at most CAP x RATE / TOKENS
   requests/s: at first the nodes are the limit, not the gateway. ``THROUGHPUT_REQUESTS``
   requests arrive faster than all N nodes can serve them (``OVERLOAD`` x their ceiling)
   and wait in the gateway's one queue (``queue_size`` holds them all), so every node is
   kept full. Figures: requests/s and tokens/s from the client's first request to its last
   token, the gateway's CPU over that span as a share of one core (where it nears 100 %
   the gateway, not the nodes, is the limit), its CPU per request, and the simulator's and
   load generator's CPU shares (two shared cores: they compete with the gateway). Node
   counts run in turns (1, 2, ..., N, 1, 2, ...), ``ROUNDS`` rounds; medians.

Output: two tables on stdout and in ``nodes.md``, every run in ``nodes.json``, raw logs of
each run under ``--out``/nodes (``bench/out/full/nodes`` by default). The published
figures are copied into bench/RESULTS.md by hand (section "Node pool"); this mode never
writes that file. Exit status 0 when every request of every run completed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from . import report
from .proctree import cpu_seconds
from .run import SHORT_ARRIVALS_PER_S, Load, Settings, _cpu_model, _loadavg, revision, run_loadgen
from .services import (
    Service,
    ServiceError,
    _spawn,
    _wait_port,
    _wait_workers,
    free_port,
    gateway_config,
    niced,
    raise_fd_limit,
    start_gateway,
)

# Routing cost: rounds of (one node, N nodes) side by side, the target on their difference;
# throughput: rounds of 1..N nodes in turns. --repeat R sets both.
ROUTING_ROUNDS = 5
ROUNDS = 3
TARGET_US = 20.0
DEFAULT_REQUESTS = 1000
# Unmeasured one-token requests before each measured load, per node: every node's first
# upstream connection and the gateway's lazy imports are start-up, not per-request cost.
WARM_UP_PER_NODE = 4
# Throughput: each node's cap, the simulator's pace and each request's tokens (a node
# serves at most CAP x RATE / TOKENS requests/s), the requests per run, and how much
# faster than the N nodes' ceiling they arrive (they queue in the gateway).
CAP = 2
RATE = 2000.0
TOKENS = 8
THROUGHPUT_REQUESTS = 1500
OVERLOAD = 1.5
# --quick: a handful of requests, one round.
QUICK_THROUGHPUT_REQUESTS = 12
QUICK_TOKENS = 3
QUICK_RATE = 200.0
# The simulator prints one line per node once all listen.
SIM_LINE = "ollama simulator listening on "
SIM_START_TIMEOUT_S = 20.0
# The first discovery comes one routing.probe_interval (5 s) after the gateway starts.
WARM_TIMEOUT_S = 15.0

ROUTING_COLUMNS = [
    "gateway",
    "requests done",
    "CPU µs/request",
    "diff µs/request",
    "sim core%",
    "lg µs/request",
]
THROUGHPUT_COLUMNS = [
    "nodes",
    "ceiling req/s",
    "requests done",
    "req/s",
    "of ceiling %",
    "tok/s",
    "gateway core%",
    "gateway µs/request",
    "sim core%",
    "lg core%",
]


@dataclass
class NodeRun:
    """One run of either section: ``kind`` "routing" (``pool`` False: plain endpoint) or
    "throughput"; ``nodes``: the gateway's nodes (1 for the plain endpoint)."""

    kind: str
    nodes: int
    pool: bool
    round: int
    requests: int
    completed: int
    tokens: int
    expected_tokens: int
    outcomes: dict[str, int]
    span_s: float
    wall_s: float
    gateway_cpu_s: float
    sim_cpu_s: float
    loadgen_cpu_s: float
    cap: int | None = None

    @property
    def cpu_us_per_request(self) -> float | None:
        return self.gateway_cpu_s / self.completed * 1e6 if self.completed else None

    @property
    def requests_per_s(self) -> float:
        return self.completed / self.span_s if self.span_s > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.span_s if self.span_s > 0 else 0.0

    def core_pct(self, cpu_s: float) -> float | None:
        """``cpu_s`` over the client's span, as a share of one core."""
        return cpu_s / self.span_s * 100.0 if self.span_s > 0 else None


@dataclass(frozen=True)
class Plan:
    nodes: int
    routing_rounds: int
    rounds: int
    requests: int  # routing cost: one-token requests per run
    throughput_requests: int
    tokens: int
    rate: float
    cap: int
    workers: int
    nice: int
    out: Path

    def ceiling(self, nodes: int) -> float:
        """Requests/s that ``nodes`` capped, paced nodes can serve at most."""
        return nodes * self.cap * self.rate / self.tokens


def make_plan(args: argparse.Namespace) -> Plan:
    quick = bool(args.quick)
    repeat = args.repeat if args.repeat > 1 else None
    return Plan(
        nodes=args.nodes,
        routing_rounds=repeat or (1 if quick else ROUTING_ROUNDS),
        rounds=repeat or (1 if quick else ROUNDS),
        requests=args.short or DEFAULT_REQUESTS,
        throughput_requests=QUICK_THROUGHPUT_REQUESTS if quick else THROUGHPUT_REQUESTS,
        tokens=QUICK_TOKENS if quick else TOKENS,
        rate=QUICK_RATE if quick else RATE,
        cap=CAP,
        workers=args.workers,
        nice=args.harness_nice,
        out=args.out / "nodes",
    )


def start_nodes(run_dir: Path, count: int, rate: float, tokens: int, nice: int) -> list[Service]:
    """One simulator process serving ``count`` nodes (uvloop, numbered tokens); one
    ``Service`` per node, all with the same process (stop the first)."""
    log = run_dir / "simulator.log"
    cmd = [sys.executable, "-m", "clawproxy.simulator", "--nodes", str(count), "--port", "0"]
    cmd += ["--rate", f"{rate:g}", "--numbered", "--tokens", str(tokens), "--uvloop"]
    proc = _spawn(niced(cmd, nice), log, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    ports: list[int] = []
    deadline = time.monotonic() + SIM_START_TIMEOUT_S
    while len(ports) < count and time.monotonic() < deadline:
        line = proc.stdout.readline().decode(errors="replace")
        if not line:
            break
        if line.startswith(SIM_LINE):
            ports.append(int(line.strip().rsplit(":", 1)[1]))
    if len(ports) < count:
        proc.kill()
        proc.wait()
        raise ServiceError(f"simulator gave {len(ports)} of {count} nodes; see {log}")
    return [Service(f"node{i + 1}", proc, port, log) for i, port in enumerate(ports)]


def stop_nodes(nodes: Sequence[Service]) -> None:
    if nodes:
        nodes[0].stop()
        if nodes[0].proc.stdout is not None:
            nodes[0].proc.stdout.close()


def nodes_yaml(ports: Sequence[int], cap: int | None) -> str:
    """A ``nodes:`` list of the simulated nodes (``cap``: each one's max_concurrent)."""
    lines = ["nodes:"]
    for index, port in enumerate(ports):
        lines += [f"  - name: node{index + 1}", f"    url: http://127.0.0.1:{port}"]
        if cap is not None:
            lines.append(f"    max_concurrent: {cap}")
    return "\n".join(lines) + "\n"


def start_pool_gateway(
    run_dir: Path, ports: Sequence[int], cap: int | None, queue_size: int, workers: int
) -> Service:
    """``start_gateway``'s gateway (same command, same base config) with a ``nodes:`` list."""
    port = free_port()
    run_dir = run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    config = run_dir / "gateway.yaml"
    base = gateway_config(run_dir, port, ports[0], queue_size=queue_size)
    config.write_text(base + nodes_yaml(ports, cap))
    (run_dir / "gateway.log").unlink(missing_ok=True)
    log = run_dir / "gateway.stderr.log"
    cmd = [sys.executable, "-m", "clawproxy", "--config", str(config), "--port", str(port)]
    service = Service("gateway", _spawn([*cmd, "--workers", str(workers)], log), port, log)
    _wait_port(service)
    _wait_workers(service, run_dir / "gateway.log", workers)
    return service


def wait_all_warm(log: Path, nodes: int) -> None:
    """Until the admin API's ``GET /nodes`` shows every node with a model in memory: the
    gateway's first discovery (``/api/ps``), one probe interval after its start."""
    match = re.search(r"admin on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
    if match is None:
        raise ServiceError(f"no admin address in {log}")
    deadline = time.monotonic() + WARM_TIMEOUT_S
    while time.monotonic() < deadline:
        with urllib.request.urlopen(match.group(1) + "/nodes", timeout=5.0) as reply:
            listed = json.loads(reply.read())["nodes"]
        if len(listed) == nodes and all(n.get("loaded_models") for n in listed):
            return
        time.sleep(0.1)
    raise ServiceError(f"the gateway's nodes were not all warm within {WARM_TIMEOUT_S:g}s")


def warm_nodes(settings: Settings, ports: Sequence[int]) -> None:
    """One request straight to each node before a gateway starts: every node has the
    model in memory (its ``/api/ps`` lists it), as the nodes of a pool in service do."""
    for port in ports:
        run_loadgen(settings, Load(1, 0.0, tokens=1), port, "ndjson")


def node_run(
    kind: str,
    nodes: int,
    pool: bool,
    round_: int,
    lg: dict[str, object],
    cpu: tuple[float, float, float, float],
    cap: int | None,
) -> NodeRun:
    """A run's figures from the load generator's result ``lg`` (one target's) and
    ``cpu``: wall seconds, gateway, simulator and load generator CPU seconds."""
    wall, gateway_cpu, sim_cpu, loadgen_cpu = cpu
    return NodeRun(
        kind=kind,
        nodes=nodes,
        pool=pool,
        round=round_,
        requests=int(lg["streams"]),  # type: ignore[call-overload]
        completed=int(lg["completed"]),  # type: ignore[call-overload]
        tokens=int(lg["tokens"]),  # type: ignore[call-overload]
        expected_tokens=int(lg["expected_tokens"]),  # type: ignore[call-overload]
        outcomes=dict(lg["outcomes"]),  # type: ignore[call-overload]
        span_s=float(lg["span_s"]),  # type: ignore[arg-type]
        wall_s=wall,
        gateway_cpu_s=gateway_cpu,
        sim_cpu_s=sim_cpu,
        loadgen_cpu_s=loadgen_cpu,
        cap=cap,
    )


def routing_round(plan: Plan, round_: int) -> list[NodeRun]:
    """Both gateways at once, with fresh processes, in front of one simulator of N nodes:
    the plain endpoint (on node 1) and the pool (all N). One load generator sends each
    its ``plan.requests`` one-token requests, interleaved (``loadgen --pair-port``), so a
    stall of the machine hits both alike; which one leads alternates by round. CPU of
    each gateway over the same interval; the load generator's CPU is split evenly."""
    run_dir = plan.out / f"routing-r{round_}"
    arrivals = SHORT_ARRIVALS_PER_S
    settings = Settings(run_dir, 1, arrivals, plan.workers, nice=plan.nice)
    load = Load(plan.requests, 0.0, tokens=1, arrivals=arrivals)
    sims = start_nodes(run_dir, plan.nodes, 0.0, 1, plan.nice)
    gateways: dict[bool, Service] = {}
    try:
        ports = [s.port for s in sims]
        warm_nodes(settings, ports)
        gateways[False] = start_gateway(run_dir / "plain", ports[0], plan.workers, queue_size=0)
        gateways[True] = start_pool_gateway(run_dir / "pool", ports, None, 0, plan.workers)
        warm = Load(WARM_UP_PER_NODE * plan.nodes, 0.0, tokens=1, arrivals=arrivals)
        for gateway in gateways.values():
            run_loadgen(settings, warm, gateway.port, "sse")
        # The pool's prober starts with its first request; its first discovery follows.
        wait_all_warm(run_dir / "pool" / "gateway.log", plan.nodes)
        lead = round_ % 2 == 0  # the pool leads in even rounds
        first, second = gateways[lead], gateways[not lead]
        before = {pool: cpu_seconds(gateway.pid) for pool, gateway in gateways.items()}
        sim0 = cpu_seconds(sims[0].pid)
        started = time.monotonic()
        lg = run_loadgen(
            settings, load, first.port, "sse", pair_port=second.port, pair_format="sse"
        )
        wall = time.monotonic() - started
        spent = {
            pool: cpu_seconds(gateway.pid) - before[pool] for pool, gateway in gateways.items()
        }
        sim_cpu = cpu_seconds(sims[0].pid) - sim0
    finally:
        for gateway in gateways.values():
            gateway.stop()
        stop_nodes(sims)
    twin = lg["pair"]
    assert isinstance(twin, dict)
    results = {lead: lg, not lead: twin}
    half_lg = float(lg["loadgen_cpu_s"]) / 2  # type: ignore[arg-type]
    return [
        node_run(
            "routing",
            plan.nodes if pool else 1,
            pool,
            round_,
            results[pool],
            (wall, spent[pool], sim_cpu, half_lg),
            None,
        )
        for pool in (False, True)
    ]


def throughput_run(plan: Plan, nodes: int, round_: int) -> NodeRun:
    """``nodes`` capped, paced nodes in a ``nodes:`` list, with fresh processes; the
    requests arrive faster than the nodes serve them and wait in the gateway's queue."""
    arrivals = OVERLOAD * plan.ceiling(plan.nodes)
    load = Load(plan.throughput_requests, plan.rate, tokens=plan.tokens, arrivals=arrivals)
    run_dir = plan.out / f"throughput-{nodes}-nodes-r{round_}"
    settings = Settings(run_dir, plan.tokens, arrivals, plan.workers, nice=plan.nice)
    sims = start_nodes(run_dir, nodes, plan.rate, plan.tokens, plan.nice)
    gateway: Service | None = None
    try:
        ports = [s.port for s in sims]
        warm_nodes(settings, ports)
        queue = plan.throughput_requests
        gateway = start_pool_gateway(run_dir, ports, plan.cap, queue, plan.workers)
        warm = Load(WARM_UP_PER_NODE * nodes, plan.rate, tokens=1, arrivals=SHORT_ARRIVALS_PER_S)
        run_loadgen(settings, warm, gateway.port, "sse")
        if nodes > 1:
            wait_all_warm(run_dir / "gateway.log", nodes)
        gw0, sim0 = cpu_seconds(gateway.pid), cpu_seconds(sims[0].pid)
        started = time.monotonic()
        lg = run_loadgen(settings, load, gateway.port, "sse")
        wall = time.monotonic() - started
        gw_cpu = cpu_seconds(gateway.pid) - gw0
        sim_cpu = cpu_seconds(sims[0].pid) - sim0
    finally:
        if gateway is not None:
            gateway.stop()
        stop_nodes(sims)
    lg_cpu = float(lg["loadgen_cpu_s"])  # type: ignore[arg-type]
    return node_run(
        "throughput", nodes, True, round_, lg, (wall, gw_cpu, sim_cpu, lg_cpu), plan.cap
    )


def _done(runs: Sequence[NodeRun]) -> str:
    worst = min(runs, key=lambda r: r.completed)
    text = f"{worst.completed}/{worst.requests}"
    return text if all(r.completed == r.requests for r in runs) else text + " !"


def _spread(values: Sequence[float | None], spec: str) -> str:
    spread = report.Spread.of(values)
    return "-" if spread is None else spread.text(spec)


def routing_difference(runs: Sequence[NodeRun]) -> report.Spread | None:
    """Per round: the pool's CPU per request minus the plain endpoint's."""
    plain = {r.round: r.cpu_us_per_request for r in runs if not r.pool}
    return report.Spread.of(
        r.cpu_us_per_request - base
        for r in runs
        if r.pool and r.cpu_us_per_request is not None and (base := plain.get(r.round)) is not None
    )


def routing_rows(runs: Sequence[NodeRun], plan: Plan) -> list[list[str]]:
    body = []
    for pool in (False, True):
        mine = [r for r in runs if r.kind == "routing" and r.pool == pool]
        if not mine:
            continue
        diff = routing_difference([r for r in runs if r.kind == "routing"]) if pool else None
        body.append(
            [
                f"{plan.nodes} nodes (nodes: list)" if pool else "1 node (model.endpoint)",
                _done(mine),
                _spread([r.cpu_us_per_request for r in mine], ".1f"),
                "-" if diff is None else diff.text("+.1f"),
                _spread([r.core_pct(r.sim_cpu_s) for r in mine], ".0f"),
                _spread(
                    [r.loadgen_cpu_s / r.completed * 1e6 if r.completed else None for r in mine],
                    ".0f",
                ),
            ]
        )
    return body


def throughput_rows(runs: Sequence[NodeRun], plan: Plan) -> list[list[str]]:
    body = []
    for nodes in range(1, plan.nodes + 1):
        mine = [r for r in runs if r.kind == "throughput" and r.nodes == nodes]
        if not mine:
            continue
        body.append(
            [
                str(nodes),
                f"{plan.ceiling(nodes):.0f}",
                _done(mine),
                _spread([r.requests_per_s for r in mine], ".0f"),
                _spread([r.requests_per_s / plan.ceiling(nodes) * 100 for r in mine], ".0f"),
                _spread([r.tokens_per_s for r in mine], ".0f"),
                _spread([r.core_pct(r.gateway_cpu_s) for r in mine], ".0f"),
                _spread([r.cpu_us_per_request for r in mine], ".0f"),
                _spread([r.core_pct(r.sim_cpu_s) for r in mine], ".0f"),
                _spread([r.core_pct(r.loadgen_cpu_s) for r in mine], ".0f"),
            ]
        )
    return body


def verdict(runs: Sequence[NodeRun]) -> str:
    diff = routing_difference([r for r in runs if r.kind == "routing"])
    if diff is None:
        return f"routing cost: no figure (target <= {TARGET_US:g} µs/request)"
    ok = "PASS" if diff.median <= TARGET_US else "FAIL"
    return (
        f"{ok}: the node pool adds {diff.text('+.1f')} µs of gateway CPU per request "
        f"(target <= {TARGET_US:g} µs)"
    )


def _rounds(count: int) -> str:
    if count > 1:
        return f"{count} rounds, fresh processes each; median (min-max) across rounds"
    return "1 round (single runs)"


def notes(plan: Plan) -> tuple[str, str]:
    routing = (
        f"{plan.requests} one-token chat requests to each gateway per round (SSE, one "
        f"connection each, arriving at {SHORT_ARRIVALS_PER_S:g}/s), the simulator unpaced, "
        "every node warm; both gateways at once, their requests interleaved by one load "
        f"generator, the leader alternating; {_rounds(plan.routing_rounds)}; diff: median "
        "(min-max) of the per-round differences (pool minus plain endpoint); CPU: each "
        "gateway's process tree (schedstat) over the same interval; lg: half the load "
        "generator's CPU; requests done: the worst round."
    )
    rounds = _rounds(plan.rounds)
    throughput = (
        f"{plan.throughput_requests} requests of {plan.tokens} tokens per run, each node "
        f"capped at max_concurrent {plan.cap}, the simulator paced at {plan.rate:g} tokens/s "
        f"(ceiling: nodes x {plan.cap} x {plan.rate:g} / {plan.tokens} requests/s), arriving "
        f"at {OVERLOAD:g} x the {plan.nodes} nodes' ceiling and queued in the gateway; "
        f"{rounds}; rates and core shares over the client's first request to last token "
        "(core%: share of one core; sim: the one simulator process of all nodes; lg: the "
        "load generator)."
    )
    return routing, throughput


def header(argv: Sequence[str], measured: str, load_before: str) -> str:
    command = " ".join(["python -m bench", *argv])
    return (
        f"Written by `{command}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
        f"clawproxy at {measured}; {_cpu_model()}, {os.cpu_count()} logical CPUs shared "
        f"with other work (load average {load_before} before, {_loadavg()} after)."
    )


def main(args: argparse.Namespace, argv: Sequence[str]) -> int:
    if args.nodes < 2:
        print(f"--nodes must be at least 2, not {args.nodes}", file=sys.stderr)
        return 2
    raise_fd_limit()
    plan = make_plan(args)
    plan.out.mkdir(parents=True, exist_ok=True)
    measured, load_before = revision(), _loadavg()
    runs: list[NodeRun] = []
    for round_ in range(1, plan.routing_rounds + 1):
        pair = routing_round(plan, round_)
        runs += pair
        plain, pool = (report.fmt(r.cpu_us_per_request, ".1f") for r in pair)
        print(
            f"routing [{round_}/{plan.routing_rounds}]: {pair[0].completed}+"
            f"{pair[1].completed}/{2 * plan.requests} requests, gateway CPU per request "
            f"{plain} µs with 1 node, {pool} µs with {plan.nodes}",
            flush=True,
        )
    for round_ in range(1, plan.rounds + 1):
        for nodes in range(1, plan.nodes + 1):
            run = throughput_run(plan, nodes, round_)
            runs.append(run)
            print(
                f"throughput [{round_}/{plan.rounds}] {nodes} node(s): "
                f"{run.completed}/{run.requests} requests, {run.requests_per_s:.0f} req/s, "
                f"gateway {report.fmt(run.core_pct(run.gateway_cpu_s), '.0f')}% of a core",
                flush=True,
            )
    routing_note, throughput_note = notes(plan)
    routing = routing_rows(runs, plan)
    throughput = throughput_rows(runs, plan)
    line = verdict(runs)
    print("\nRouting cost: gateway CPU per request, one node against a pool\n")
    print(report.aligned(ROUTING_COLUMNS, routing) + "\n" + routing_note + "\n" + line)
    print("\nThroughput scaling: capped, paced nodes\n")
    print(report.aligned(THROUGHPUT_COLUMNS, throughput) + "\n" + throughput_note)
    text = (
        f"# Node pool (`--nodes {plan.nodes}`)\n\n{header(argv, measured, load_before)}\n\n"
        f"## Routing cost\n\n{report.markdown(ROUTING_COLUMNS, routing)}\n\n{routing_note}\n\n"
        f"{line}\n\n## Throughput scaling\n\n"
        f"{report.markdown(THROUGHPUT_COLUMNS, throughput)}\n\n{throughput_note}\n"
    )
    (plan.out / "nodes.md").write_text(text)
    summary = {
        "command": " ".join(["python -m bench", *argv]),
        "revision": measured,
        "plan": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(plan).items()},
        "runs": [
            {
                **asdict(r),
                "cpu_us_per_request": r.cpu_us_per_request,
                "requests_per_s": r.requests_per_s,
                "tokens_per_s": r.tokens_per_s,
                "gateway_core_pct": r.core_pct(r.gateway_cpu_s),
            }
            for r in runs
        ],
    }
    (plan.out / "nodes.json").write_text(json.dumps(summary, indent=1))
    print(f"\nwrote {plan.out / 'nodes.md'} and nodes.json")
    return 0 if all(r.completed == r.requests for r in runs) else 1
