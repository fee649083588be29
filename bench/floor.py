"""What any Python proxy adds to a new request, and what the gateway adds on top of it.

    python -m bench.floor --requests 100 --spacing 0.05 --repeat 3

Theory of operation: the issue's TTFT line (added time to first token p50 <= 1 ms) is
about new requests arriving while the machine does other work, the regime of the
bench's probes: one request at a time, tens of milliseconds apart, each finding the
CPU caches taken by other processes. This runs that regime alone, without a streaming
load, through five paths in turns, each run with fresh processes: ``direct`` (client to
simulator), ``nginx`` (pass-through, as in ``python -m bench``), two ``bench.floorproxy``
processes, the least a uvloop proxy can do per request (``floor-scan``: heads found by
hand; ``floor-h11``: heads parsed by h11, as the gateway parses them), and the
``gateway``. Every path gets the same one-token requests (``--requests``, one new
connection each, ``--spacing`` apart) after a few unmeasured ones, from the same load
generator as the bench. The simulator is paced (``--rate``, tokens/s) as a model is, so
the first token comes alone with Ollama's head and the done line one token time later,
as with the bench's probes; unpaced, both would share one read, which no model does.

Per run: the client's TTFT p50, the added TTFT against the direct run of the same round
(medians of per-round differences across ``--repeat``, with their range), and the middle
process's CPU per request (schedstat, over the measured requests). Read across: the
step from ``floor-scan`` to ``floor-h11`` is h11's share of any proxy's cost, the step
from ``floor-h11`` to ``gateway`` is everything the gateway does that the floor does not
(validation, mapping, re-framing, admission, deadlines, metrics, the access log).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from . import proctree, report
from .run import FLOOR_PATHS, Load, Settings, run_loadgen, start_middle, wire_format
from .services import REPO, Service, start_simulator

PATHS = ("direct", "nginx", *FLOOR_PATHS, "gateway")
WARM_UP_REQUESTS = 5
COLUMNS = ["path", "requests done", "TTFT p50 ms", "+TTFT p50 ms", "CPU µs/request"]


@dataclass
class FloorRun:
    path: str
    repeat: int
    requests: int
    completed: int
    ttft_p50_ms: float | None
    cpu_us_per_request: float | None


def run_path(path: str, repeat: int, args: argparse.Namespace) -> FloorRun:
    run_dir = args.out / f"{path}-r{repeat}"
    run_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(out=run_dir, tokens=1, arrivals=1.0 / args.spacing, workers=1)
    sim = start_simulator(run_dir, args.rate, 1)
    middle: Service | None = None
    try:
        middle = None if path == "direct" else start_middle(settings, run_dir, path, sim, 1)
        port = sim.port if middle is None else middle.port
        fmt = wire_format(path)
        run_loadgen(settings, Load(WARM_UP_REQUESTS, 0.0, tokens=1), port, fmt)
        cpu_before = None if middle is None else proctree.cpu_seconds(middle.pid)
        result = run_loadgen(settings, Load(args.requests, 0.0, tokens=1), port, fmt)
        cpu_us = None
        if middle is not None and cpu_before is not None:
            spent = proctree.cpu_seconds(middle.pid) - cpu_before
            cpu_us = spent / args.requests * 1e6
    finally:
        if middle is not None:
            middle.stop()
        sim.stop()
    ttft = result.get("ttft_p50_s")
    return FloorRun(
        path=path,
        repeat=repeat,
        requests=args.requests,
        completed=int(result["completed"]),  # type: ignore[call-overload]
        ttft_p50_ms=None if ttft is None else float(ttft) * 1000.0,  # type: ignore[arg-type]
        cpu_us_per_request=cpu_us,
    )


def added_ttft(runs: Sequence[FloorRun], path: str) -> report.Spread | None:
    """Per round: the path's TTFT p50 minus the direct run's of the same round."""
    direct = {r.repeat: r.ttft_p50_ms for r in runs if r.path == "direct"}
    return report.Spread.of(
        r.ttft_p50_ms - d
        for r in runs
        if r.path == path and r.ttft_p50_ms is not None and (d := direct.get(r.repeat)) is not None
    )


def rows(runs: Sequence[FloorRun], paths: Sequence[str]) -> list[list[str]]:
    body = []
    for path in paths:
        mine = [r for r in runs if r.path == path]
        if not mine:
            continue
        done = min(r.completed for r in mine)
        ttft = report.Spread.of(r.ttft_p50_ms for r in mine)
        cpu = report.Spread.of(r.cpu_us_per_request for r in mine)
        added = None if path == "direct" else added_ttft(runs, path)
        body.append(
            [
                path,
                f"{done}/{mine[0].requests}",
                "-" if ttft is None else ttft.text(".2f"),
                "-" if added is None else added.text("+.2f"),
                "-" if cpu is None else cpu.text(".0f"),
            ]
        )
    return body


def note(args: argparse.Namespace) -> str:
    return (
        f"{args.requests} one-token requests per run, {args.spacing * 1000:g} ms apart, one "
        f"connection each, the simulator at {args.rate:g} tokens/s; {args.repeat} rounds, "
        "the paths in turns; median (min-max) across rounds; +TTFT against the same "
        "round's direct run; requests done: the worst round."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floor", description=__doc__)
    parser.add_argument("--requests", type=int, default=100, help="measured requests per run")
    parser.add_argument("--spacing", type=float, default=0.05, help="seconds between requests")
    parser.add_argument("--repeat", type=int, default=3, help="rounds of all paths in turns")
    parser.add_argument("--rate", type=float, default=100.0, help="the simulator's tokens/s")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma-separated, in turn order")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "out" / "floor")
    args = parser.parse_args(argv)
    # Absolute: nginx resolves a relative configuration path against its own prefix.
    args.out = args.out.resolve()
    paths = [p for p in args.paths.split(",") if p]
    unknown = sorted(set(paths) - set(PATHS))
    if unknown or "direct" not in paths:
        parser.error(f"--paths must include direct and only {', '.join(PATHS)}")
    runs: list[FloorRun] = []
    for repeat in range(1, args.repeat + 1):
        for path in paths:
            run = run_path(path, repeat, args)
            runs.append(run)
            print(f"round {repeat} {path}: TTFT p50 {report.fmt(run.ttft_p50_ms)} ms", flush=True)
    body = rows(runs, paths)
    command = "python -m bench.floor " + " ".join(argv if argv is not None else sys.argv[1:])
    print("\n" + report.aligned(COLUMNS, body) + "\n" + note(args))
    args.out.mkdir(parents=True, exist_ok=True)
    text = f"`{command.strip()}`\n\n{report.markdown(COLUMNS, body)}\n\n{note(args)}\n"
    (args.out / "floor.md").write_text(text)
    (args.out / "floor.json").write_text(json.dumps([asdict(r) for r in runs], indent=1))
    print(f"wrote {args.out / 'floor.md'}")
    return 0 if all(r.completed == r.requests for r in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
