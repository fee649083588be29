"""Presenting a benchmark run: the table, the budget of issue #6, the chart, RESULTS.md.

Theory of operation: ``RunResult`` holds what one (load, path) run measured; everything
relative (added TTFT, the gap against direct, CPU as a multiple of nginx) is derived here
from runs of the same load in the same invocation, never from stored figures, because on a
shared machine only side-by-side numbers compare. TTFT comes two ways: over the load's own
streams while they arrive ("arrivals"), and from probe requests sent while the N streams
run ("at N", what a new request sees on a busy box); the budget judges the latter at 100
streams and the former on the burst load, each line saying which. RESULTS.md is
regenerated above a marker line; whatever is written below that marker (the profile
analysis) is kept across runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

MIB = 1024 * 1024
KEEP_MARKER = "<!-- Everything below this line is written by hand and kept across runs. -->"

# Issue #6's budget.
CPU_RATIO_MAX = 1.5
CPU_RATIO_STREAMS = 200
ADDED_TTFT_P50_MAX_MS = 1.0
ADDED_TTFT_STREAMS = 100
GAP_P99_EXTRA_MAX_MS = 1.0
RSS_PEAK_MAX_MIB = 64.0
RSS_PEAK_STREAMS = 1000
RSS_IDLE_MAX_MIB = 30.0


@dataclass
class RunResult:
    """One path under one load. Times in ms, CPU in µs per delivered token, RSS in MiB."""

    label: str
    streams: int
    rate: float
    path: str
    tokens: int
    expected_tokens: int
    completed: int
    outcomes: dict[str, int]
    out_of_order: int
    tokens_per_s: float
    wall_s: float
    ttft_p50_ms: float | None
    ttft_p99_ms: float | None
    gap_p50_ms: float | None
    gap_p99_ms: float | None
    gap_max_ms: float | None
    sim_cpu_us: float | None
    sim_core_pct: float
    loadgen_cpu_us: float | None
    mid_cpu_us: float | None = None
    mid_cpu_ticks_us: float | None = None
    rss_idle_mib: float | None = None
    rss_peak_mib: float | None = None
    sim_max_active: int = 0
    # Connections the simulator accepted, warm-up included: upstream keep-alive reuse.
    sim_connections: int = 0
    extra: dict[str, object] = field(default_factory=dict)
    # New streams per second during the ramp; the burst load is the thundering-herd row.
    arrivals: float | None = None
    burst: bool = False
    # One-token probe requests sent while the load's streams ran (0: none) and their TTFT.
    probes: int = 0
    probes_completed: int = 0
    probe_outcomes: dict[str, int] = field(default_factory=dict)
    probe_ttft_p50_ms: float | None = None
    probe_ttft_p99_ms: float | None = None

    @property
    def all_delivered(self) -> bool:
        return self.tokens == self.expected_tokens and self.completed == self.streams

    @property
    def paced(self) -> bool:
        return self.rate > 0


def _find(results: Sequence[RunResult], label: str, path: str) -> RunResult | None:
    return next((r for r in results if r.label == label and r.path == path), None)


def _delta(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


def _fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


COLUMNS = (
    "load",
    "path",
    "tokens got/expected",
    "tok/s",
    "CPU µs/tok",
    "x nginx",
    "sim core%",
    "lg µs/tok",
    "TTFT p50 ms",
    "+TTFT p50 (arrivals)",
    "+TTFT p99 (arrivals)",
    "+TTFT p50 at N",
    "+TTFT p99 at N",
    "gap p99 ms",
    "+gap p99",
    "RSS idle MiB",
    "RSS peak MiB",
)


def rows(results: Sequence[RunResult]) -> list[list[str]]:
    out = []
    for r in results:
        direct = _find(results, r.label, "direct")
        nginx = _find(results, r.label, "nginx")
        base = direct if direct is not None and r.path != "direct" else None
        ratio = None
        if r.mid_cpu_us is not None and nginx is not None and nginx.mid_cpu_us and r is not nginx:
            ratio = r.mid_cpu_us / nginx.mid_cpu_us
        tokens = f"{r.tokens}/{r.expected_tokens}"
        if not r.all_delivered:
            tokens += " !"
        out.append(
            [
                r.label,
                r.path,
                tokens,
                _fmt(r.tokens_per_s, ".0f"),
                _fmt(r.mid_cpu_us, ".1f"),
                _fmt(ratio, ".2f"),
                _fmt(r.sim_core_pct, ".0f"),
                _fmt(r.loadgen_cpu_us, ".1f"),
                _fmt(r.ttft_p50_ms),
                _fmt(_delta(r.ttft_p50_ms, base.ttft_p50_ms) if base else None),
                _fmt(_delta(r.ttft_p99_ms, base.ttft_p99_ms) if base else None),
                _fmt(_delta(r.probe_ttft_p50_ms, base.probe_ttft_p50_ms) if base else None),
                _fmt(_delta(r.probe_ttft_p99_ms, base.probe_ttft_p99_ms) if base else None),
                _fmt(r.gap_p99_ms),
                _fmt(_delta(r.gap_p99_ms, base.gap_p99_ms) if base else None),
                _fmt(r.rss_idle_mib, ".1f"),
                _fmt(r.rss_peak_mib, ".1f"),
            ]
        )
    return out


def text_table(results: Sequence[RunResult]) -> str:
    body = rows(results)
    widths = [max(len(c), *(len(row[i]) for row in body)) for i, c in enumerate(COLUMNS)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(lines)


def markdown_table(results: Sequence[RunResult]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in rows(results)]
    return "\n".join(lines)


def _nearest(results: Sequence[RunResult], streams: int, path: str) -> RunResult | None:
    """The paced (not burst) run of ``streams`` streams on ``path``."""
    paced = [r for r in results if r.path == path and r.paced and not r.burst]
    exact = [r for r in paced if r.streams == streams]
    return exact[0] if exact else None


def _gap_extra(results: Sequence[RunResult], r: RunResult) -> float | None:
    d = _find(results, r.label, "direct")
    if d is None or r.gap_p99_ms is None or not d.gap_p99_ms:
        return None
    return r.gap_p99_ms - d.gap_p99_ms


def budget(results: Sequence[RunResult]) -> list[tuple[str, str, str]]:
    """(check, measured, verdict) for each target of issue #6 that this run can judge."""
    checks: list[tuple[str, str, str]] = []

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    gw = _nearest(results, CPU_RATIO_STREAMS, "gateway")
    ng = _nearest(results, CPU_RATIO_STREAMS, "nginx")
    if gw and ng and gw.mid_cpu_us and ng.mid_cpu_us:
        ratio = gw.mid_cpu_us / ng.mid_cpu_us
        checks.append(
            (
                f"CPU/token <= {CPU_RATIO_MAX}x nginx at {CPU_RATIO_STREAMS} streams",
                f"{gw.mid_cpu_us:.1f} vs {ng.mid_cpu_us:.1f} µs = {ratio:.2f}x",
                verdict(ratio <= CPU_RATIO_MAX),
            )
        )
    gw = _nearest(results, ADDED_TTFT_STREAMS, "gateway")
    direct = _nearest(results, ADDED_TTFT_STREAMS, "direct")
    if gw and direct:
        name = (
            f"added TTFT p50 <= {ADDED_TTFT_P50_MAX_MS} ms at {ADDED_TTFT_STREAMS} streams "
            f"(new requests while {ADDED_TTFT_STREAMS} streams run)"
        )
        added = _delta(gw.probe_ttft_p50_ms, direct.probe_ttft_p50_ms)
        if added is None:
            checks.append((name, "not measured (no probes)", "-"))
        else:
            probes = f"{gw.probes_completed}/{gw.probes} and {direct.probes_completed}/"
            checks.append(
                (
                    name,
                    f"{added:.2f} ms (probes completed: {probes}{direct.probes} direct)",
                    verdict(added <= ADDED_TTFT_P50_MAX_MS),
                )
            )
    burst_gw = next((r for r in results if r.burst and r.path == "gateway"), None)
    burst_direct = None if burst_gw is None else _find(results, burst_gw.label, "direct")
    if burst_gw and burst_direct:
        added = _delta(burst_gw.ttft_p50_ms, burst_direct.ttft_p50_ms)
        if added is not None:
            checks.append(
                (
                    f"added TTFT p50 <= {ADDED_TTFT_P50_MAX_MS} ms, {burst_gw.streams} streams "
                    f"arriving at {burst_gw.arrivals or 0:g}/s (burst)",
                    f"{added:.2f} ms",
                    verdict(added <= ADDED_TTFT_P50_MAX_MS),
                )
            )
    worst: tuple[float, str] | None = None
    for r in results:
        extra = _gap_extra(results, r) if r.path == "gateway" and r.paced else None
        if extra is not None and not r.burst and (worst is None or extra > worst[0]):
            worst = (extra, r.label)
    if worst is not None:
        checks.append(
            (
                f"gap p99 within {GAP_P99_EXTRA_MAX_MS} ms of direct (worst paced load)",
                f"{worst[0]:+.2f} ms at {worst[1]}",
                verdict(worst[0] <= GAP_P99_EXTRA_MAX_MS),
            )
        )
    extra = None if burst_gw is None else _gap_extra(results, burst_gw)
    if burst_gw is not None and extra is not None:
        checks.append(
            (
                f"gap p99 within {GAP_P99_EXTRA_MAX_MS} ms of direct, burst load",
                f"{extra:+.2f} ms at {burst_gw.label}",
                verdict(extra <= GAP_P99_EXTRA_MAX_MS),
            )
        )
    for streams in (1000, 5000):
        gw = _nearest(results, streams, "gateway")
        if gw:
            checks.append(
                (
                    f"{streams} concurrent streams, every token delivered",
                    f"{gw.tokens}/{gw.expected_tokens}, {gw.completed}/{gw.streams} streams",
                    verdict(gw.all_delivered),
                )
            )
    gw = _nearest(results, RSS_PEAK_STREAMS, "gateway")
    if gw and gw.rss_peak_mib is not None:
        checks.append(
            (
                f"RSS <= {RSS_PEAK_MAX_MIB:.0f} MiB at {RSS_PEAK_STREAMS} streams",
                f"{gw.rss_peak_mib:.1f} MiB",
                verdict(gw.rss_peak_mib <= RSS_PEAK_MAX_MIB),
            )
        )
    idle = [r.rss_idle_mib for r in results if r.path == "gateway" and r.rss_idle_mib]
    if idle:
        checks.append(
            (
                f"idle RSS after start <= {RSS_IDLE_MAX_MIB:.0f} MiB",
                f"{max(idle):.1f} MiB (worst start)",
                verdict(max(idle) <= RSS_IDLE_MAX_MIB),
            )
        )
    return checks


def budget_text(checks: Iterable[tuple[str, str, str]]) -> str:
    return "\n".join(f"  {v}  {name}: {measured}" for name, measured, v in checks)


def budget_markdown(checks: Iterable[tuple[str, str, str]]) -> str:
    lines = ["| target (issue #6) | measured | |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {v} |" for name, measured, v in checks]
    return "\n".join(lines)


def chart(results: Sequence[RunResult], out: Path) -> Path | None:
    """CPU per token and added TTFT at N streams (probes) against streams (paced loads, not
    the burst), one line per path; a load without probes has no TTFT point."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    paced = [r for r in results if r.paced and not r.burst]
    fig, (cpu_ax, ttft_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    for path, style, color in (("nginx", "s-", "tab:blue"), ("gateway", "o-", "tab:orange")):
        runs = sorted((r for r in paced if r.path == path), key=lambda r: r.streams)
        xs = [r.streams for r in runs if r.mid_cpu_us is not None]
        cpu_ys = [r.mid_cpu_us for r in runs if r.mid_cpu_us is not None]
        cpu_ax.plot(xs, cpu_ys, style, color=color, label=path)
        for pct, dash in (("p50", "-"), ("p99", ":")):
            points = []
            for r in runs:
                d = _find(results, r.label, "direct")
                mine = r.probe_ttft_p50_ms if pct == "p50" else r.probe_ttft_p99_ms
                base = None
                if d is not None:
                    base = d.probe_ttft_p50_ms if pct == "p50" else d.probe_ttft_p99_ms
                added = _delta(mine, base)
                if added is not None:
                    points.append((r.streams, added))
            if points:
                ttft_ax.plot(
                    [p[0] for p in points],
                    [p[1] for p in points],
                    style[0] + dash,
                    color=color,
                    label=f"{path} {pct}",
                )
    sims = sorted((r for r in paced if r.path == "direct"), key=lambda r: r.streams)
    cpu_ax.plot(
        [r.streams for r in sims],
        [r.sim_cpu_us for r in sims],
        "x--",
        color="tab:gray",
        label="simulator (ref.)",
    )
    cpu_ax.set(
        xscale="log", xlabel="concurrent streams", ylabel="CPU µs per token", title="CPU per token"
    )
    ttft_ax.set(
        xscale="log",
        xlabel="concurrent streams",
        ylabel="ms over direct",
        title="added time to first token of a new request at N streams",
    )
    for ax in (cpu_ax, ttft_ax):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def write_results(
    path: Path,
    results: Sequence[RunResult],
    header: str,
    profile_md: str | None,
    chart_path: Path | None,
) -> None:
    """Regenerate ``path`` above KEEP_MARKER, keeping the hand-written part below it."""
    kept = ""
    if path.exists():
        old = path.read_text()
        if KEEP_MARKER in old:
            kept = old.split(KEEP_MARKER, 1)[1]
    parts = [header, "", "## Figures", "", markdown_table(results), ""]
    parts += ["## Budget (issue #6)", "", budget_markdown(budget(results)), ""]
    if chart_path is not None:
        rel = _relative(chart_path, path.parent)
        parts += [f"![CPU per token and added TTFT at N streams]({rel})", ""]
    if profile_md:
        parts += ["## Profile of the gateway under load (py-spy)", "", profile_md, ""]
    parts += [KEEP_MARKER]
    path.write_text("\n".join(parts) + (kept if kept else "\n"))


def _relative(target: Path, base: Path) -> str:
    try:
        return str(target.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(target)


def to_json(results: Sequence[RunResult]) -> list[dict[str, object]]:
    return [dataclasses.asdict(r) for r in results]
