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

Repeats (``--repeat N``): every (load, path) ran N times, the paths in turns. ``combine``
makes one ``Combined`` per (load, path), and the table, the budget and the chart use only
those. Its ``result`` holds the median of each figure across repeats, except tokens got
and streams completed (the worst repeat: the lowest), RSS idle and peak (the highest:
they are limits) and counts of what went wrong (the highest; outcomes are summed). The
relative figures (x nginx, +TTFT, +gap) are taken per repeat, against the direct or nginx
run of the same repeat (run right next to it, on the machine in the same state), and
their median is shown; ``Spread`` keeps the lowest and highest repeat too, shown for the
CPU per token and the added TTFT at N when N > 1.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    # Which of the --repeat runs of this (load, path) it is, from 1; None in a combined row.
    repeat: int | None = None

    @property
    def all_delivered(self) -> bool:
        return self.tokens == self.expected_tokens and self.completed == self.streams

    @property
    def paced(self) -> bool:
        return self.rate > 0


def _delta(value: float | None, base: float | None) -> float | None:
    return None if value is None or base is None else value - base


def fmt(value: float | None, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def span_text(low: float, high: float, spec: str) -> str:
    """``52.1-61.0``; ``-0.21 to 2.50`` (or ``+0.2 to +3.0``) where a hyphen would read as
    a minus sign or sit next to a plus."""
    sep = "-" if low >= 0 and "+" not in spec else " to "
    return f"{low:{spec}}{sep}{high:{spec}}"


@dataclass(frozen=True)
class Spread:
    """One figure across the repeats: their median, the lowest and the highest."""

    median: float
    low: float
    high: float
    count: int

    @classmethod
    def of(cls, values: Iterable[float | None]) -> Spread | None:
        known = [v for v in values if v is not None]
        if not known:
            return None
        return cls(statistics.median(known), min(known), max(known), len(known))

    def text(self, spec: str) -> str:
        """``55.8 (52.1-61.0)`` over several repeats, the median alone over one."""
        median = format(self.median, spec)
        return median if self.count < 2 else f"{median} ({span_text(self.low, self.high, spec)})"


def _median(spread: Spread | None) -> float | None:
    return None if spread is None else spread.median


@dataclass
class Combined:
    """One (load, path) over its repeats. ``result``: the combined figures (medians; see
    ``combine``); the spreads: the middle's CPU per token, and each relative figure taken
    per repeat against the same repeat's direct (added TTFT and gap) or nginx run."""

    result: RunResult
    runs: list[RunResult]
    cpu_us: Spread | None = None
    x_nginx: Spread | None = None
    ttft_p50_added: Spread | None = None  # the load's own streams, as they arrive
    ttft_p99_added: Spread | None = None
    probe_p50_added: Spread | None = None  # the probes: a new request at N streams
    probe_p99_added: Spread | None = None
    gap_p99_added: Spread | None = None

    @property
    def repeats(self) -> int:
        return len(self.runs)

    @property
    def all_delivered(self) -> bool:
        """Every repeat delivered every token and ended every stream properly."""
        return all(r.all_delivered for r in self.runs)

    def spreads(self) -> dict[str, Spread | None]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)[2:]}


# How the repeats' figures become the combined row; any other field is a median, except
# the ones that name the load and the path (the same in every repeat).
_SAME = {"label", "streams", "rate", "path", "arrivals", "burst"}
_LOWEST = {"tokens", "completed", "probes_completed"}  # the worst repeat
# Limits (RSS) and things gone wrong are the worst repeat too; outcomes are summed.
_HIGHEST = {"expected_tokens", "probes", "out_of_order", "rss_idle_mib", "rss_peak_mib"}
_HIGHEST |= {"sim_max_active", "sim_connections"}
_SUMMED = {"outcomes", "probe_outcomes"}


def _combined_figures(runs: Sequence[RunResult]) -> RunResult:
    changes: dict[str, Any] = {"repeat": None}  # one value per field, of that field's type
    for f in dataclasses.fields(RunResult):
        name = f.name
        values = [getattr(r, name) for r in runs]
        known = [v for v in values if v is not None]
        if name in _SAME or name == "repeat":
            continue
        if name in _SUMMED:
            total: dict[str, int] = {}
            for counts in values:
                for key, n in counts.items():
                    total[key] = total.get(key, 0) + n
            changes[name] = total
        elif name == "extra":
            changes[name] = _combined_extra(runs)
        elif not known:
            changes[name] = None
        elif name in _LOWEST:
            changes[name] = min(known)
        elif name in _HIGHEST:
            changes[name] = max(known)
        else:
            changes[name] = statistics.median(known)
    return dataclasses.replace(runs[0], **changes)


def _combined_extra(runs: Sequence[RunResult]) -> dict[str, object]:
    """Numbers in ``extra`` (the probe window's length and tokens): their median."""
    out: dict[str, object] = {}
    for key, first in runs[0].extra.items():
        values = [r.extra.get(key) for r in runs]
        numbers = [float(v) for v in values if isinstance(v, int | float)]
        out[key] = statistics.median(numbers) if len(numbers) == len(values) else first
    return out


Pairing = Callable[[RunResult, RunResult], float | None]


def combine(results: Sequence[RunResult]) -> list[Combined]:
    """One ``Combined`` per (load, path), in the order the runs were made."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.label, r.path), []).append(r)

    def paired(runs: list[RunResult], base_path: str, figure: Pairing) -> Spread | None:
        """``figure(run, base)`` for each repeat against its own repeat on ``base_path``."""
        values = []
        for r in runs:
            base = next(
                (b for b in groups.get((r.label, base_path), []) if b.repeat == r.repeat), None
            )
            if base is not None and base is not r:
                values.append(figure(r, base))
        return Spread.of(values)

    def ratio(r: RunResult, base: RunResult) -> float | None:
        if r.mid_cpu_us is None or not base.mid_cpu_us:
            return None
        return r.mid_cpu_us / base.mid_cpu_us

    combined = []
    for runs in groups.values():
        combined.append(
            Combined(
                result=_combined_figures(runs),
                runs=runs,
                cpu_us=Spread.of(r.mid_cpu_us for r in runs),
                x_nginx=paired(runs, "nginx", ratio),
                ttft_p50_added=paired(
                    runs, "direct", lambda r, d: _delta(r.ttft_p50_ms, d.ttft_p50_ms)
                ),
                ttft_p99_added=paired(
                    runs, "direct", lambda r, d: _delta(r.ttft_p99_ms, d.ttft_p99_ms)
                ),
                probe_p50_added=paired(
                    runs, "direct", lambda r, d: _delta(r.probe_ttft_p50_ms, d.probe_ttft_p50_ms)
                ),
                probe_p99_added=paired(
                    runs, "direct", lambda r, d: _delta(r.probe_ttft_p99_ms, d.probe_ttft_p99_ms)
                ),
                gap_p99_added=paired(
                    runs, "direct", lambda r, d: _delta(r.gap_p99_ms, d.gap_p99_ms)
                ),
            )
        )
    return combined


def repeats_of(combined: Sequence[Combined]) -> int:
    return max((c.repeats for c in combined), default=1)


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


def rows(combined: Sequence[Combined]) -> list[list[str]]:
    out = []
    for c in combined:
        r = c.result
        tokens = f"{r.tokens}/{r.expected_tokens}"
        if not c.all_delivered:
            tokens += " !"
        out.append(
            [
                r.label,
                r.path,
                tokens,
                fmt(r.tokens_per_s, ".0f"),
                "-" if c.cpu_us is None else c.cpu_us.text(".1f"),
                fmt(_median(c.x_nginx), ".2f"),
                fmt(r.sim_core_pct, ".0f"),
                fmt(r.loadgen_cpu_us, ".1f"),
                fmt(r.ttft_p50_ms),
                fmt(_median(c.ttft_p50_added)),
                fmt(_median(c.ttft_p99_added)),
                "-" if c.probe_p50_added is None else c.probe_p50_added.text(".2f"),
                fmt(_median(c.probe_p99_added)),
                fmt(r.gap_p99_ms),
                fmt(_median(c.gap_p99_added)),
                fmt(r.rss_idle_mib, ".1f"),
                fmt(r.rss_peak_mib, ".1f"),
            ]
        )
    return out


def table_note(combined: Sequence[Combined]) -> str:
    """What the figures are, when there are several repeats ("" for one)."""
    n = repeats_of(combined)
    if n < 2:
        return ""
    return (
        f"Medians of {n} repeats per load and path; relative columns (x nginx, +TTFT, +gap) "
        "are medians of per-repeat differences against the same repeat's run; "
        '"median (min-max)" across repeats for CPU µs/tok and +TTFT p50 at N; tokens '
        "got/expected: the worst repeat; RSS: the highest."
    )


def aligned(columns: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    """A table for the terminal: every column right-aligned to its widest cell."""
    widths = [max(len(c), *(len(row[i]) for row in body)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in body]
    return "\n".join(lines)


def markdown(columns: Sequence[str], body: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines)


def text_table(combined: Sequence[Combined]) -> str:
    table = aligned(COLUMNS, rows(combined))
    note = table_note(combined)
    return f"{note}\n{table}" if note else table


def markdown_table(combined: Sequence[Combined]) -> str:
    return markdown(COLUMNS, rows(combined))


def _nearest(combined: Sequence[Combined], streams: int, path: str) -> Combined | None:
    """The paced (not burst) load of ``streams`` streams on ``path``."""
    return next(
        (
            c
            for c in combined
            if c.result.path == path
            and c.result.paced
            and not c.result.burst
            and c.result.streams == streams
        ),
        None,
    )


def _find(combined: Sequence[Combined], label: str, path: str) -> Combined | None:
    return next((c for c in combined if c.result.label == label and c.result.path == path), None)


def _across(spread: Spread, spec: str, unit: str) -> str:
    """``0.21-2.50 ms across 3 repeats``."""
    return f"{span_text(spread.low, spread.high, spec)}{unit} across {spread.count} repeats"


Check = tuple[str, str, str]  # (target, measured, verdict)


def budget(
    combined: Sequence[Combined],
    paired_gap: Check | None = None,
    paired_ttft: Check | None = None,
) -> list[Check]:
    """(check, measured, verdict) for each target of issue #6 that this run can judge,
    on the combined figures (medians; the worst repeat for delivery and RSS).
    ``paired_gap``, ``paired_ttft``: the gap and TTFT targets judged on the paired runs
    (``paired``), each placed before the same target judged on the separate runs."""
    checks: list[Check] = []
    several = repeats_of(combined) > 1

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    gw = _nearest(combined, CPU_RATIO_STREAMS, "gateway")
    ng = _nearest(combined, CPU_RATIO_STREAMS, "nginx")
    if gw and ng and gw.cpu_us and ng.cpu_us and gw.x_nginx:
        ratio = gw.x_nginx
        measured = f"{gw.cpu_us.median:.1f} vs {ng.cpu_us.median:.1f} µs = {ratio.median:.2f}x"
        if several:
            measured = (
                f"{gw.cpu_us.median:.1f} vs {ng.cpu_us.median:.1f} µs, {ratio.median:.2f}x "
                f"(medians; gateway {_across(gw.cpu_us, '.1f', ' µs')}, "
                f"ratio {span_text(ratio.low, ratio.high, '.2f')}x)"
            )
        checks.append(
            (
                f"CPU/token <= {CPU_RATIO_MAX}x nginx at {CPU_RATIO_STREAMS} streams",
                measured,
                verdict(ratio.median <= CPU_RATIO_MAX),
            )
        )
    if paired_ttft is not None:
        checks.append(paired_ttft)
    gw = _nearest(combined, ADDED_TTFT_STREAMS, "gateway")
    direct = _nearest(combined, ADDED_TTFT_STREAMS, "direct")
    if gw and direct:
        name = (
            f"added TTFT p50 <= {ADDED_TTFT_P50_MAX_MS} ms at {ADDED_TTFT_STREAMS} streams, "
            f"separate runs in turns (new requests while {ADDED_TTFT_STREAMS} streams run)"
        )
        added = gw.probe_p50_added
        if added is None:
            checks.append((name, "not measured (no probes)", "-"))
        else:
            g, d = gw.result, direct.result
            probes = f"{g.probes_completed}/{g.probes} and {d.probes_completed}/{d.probes} direct"
            measured = f"{added.median:.2f} ms (probes completed: {probes})"
            if several:
                measured = (
                    f"{added.median:.2f} ms (median; {_across(added, '.2f', ' ms')}; "
                    f"probes completed in the worst repeat: {probes})"
                )
            checks.append((name, measured, verdict(added.median <= ADDED_TTFT_P50_MAX_MS)))
    if paired_gap is not None:
        checks.append(paired_gap)
    checks += _gap_in_turns(combined)
    worst_of = f" (worst of {repeats_of(combined)} repeats)" if several else ""
    for streams in (1000, 5000):
        gw = _nearest(combined, streams, "gateway")
        if gw:
            g = gw.result
            checks.append(
                (
                    f"{streams} concurrent streams, every token delivered",
                    f"{g.tokens}/{g.expected_tokens}, {g.completed}/{g.streams} streams{worst_of}",
                    verdict(gw.all_delivered),
                )
            )
    gw = _nearest(combined, RSS_PEAK_STREAMS, "gateway")
    if gw and gw.result.rss_peak_mib is not None:
        peak = gw.result.rss_peak_mib
        checks.append(
            (
                f"RSS <= {RSS_PEAK_MAX_MIB:.0f} MiB at {RSS_PEAK_STREAMS} streams",
                f"{peak:.1f} MiB" + (f" (highest of {gw.repeats} repeats)" if several else ""),
                verdict(peak <= RSS_PEAK_MAX_MIB),
            )
        )
    idle = [
        r.rss_idle_mib for c in combined for r in c.runs if r.path == "gateway" and r.rss_idle_mib
    ]
    if idle:
        checks.append(
            (
                f"idle RSS after start <= {RSS_IDLE_MAX_MIB:.0f} MiB",
                f"{max(idle):.1f} MiB (worst start)",
                verdict(max(idle) <= RSS_IDLE_MAX_MIB),
            )
        )
    return checks


def _gap_in_turns(combined: Sequence[Combined]) -> list[Check]:
    """The gap target on the separate runs in turns (the main table's +gap p99).

    Judged only where the measurement can resolve it: when the direct runs' own gap p99
    moved by more than the target across repeats, the line says so and gives no verdict.
    """
    judged = [
        (c, c.gap_p99_added)
        for c in combined
        if c.result.path == "gateway" and c.result.paced and not c.result.burst
    ]
    known = [(c, added) for c, added in judged if added is not None]
    if not known:
        return []
    worst, added = max(known, key=lambda pair: pair[1].median)
    r = worst.result
    name = f"gap p99 within {GAP_P99_EXTRA_MAX_MS} ms of direct, separate runs in turns"
    measured = f"{added.median:+.2f} ms at {r.label}"
    direct = _find(combined, r.label, "direct")
    own = None if direct is None else Spread.of(d.gap_p99_ms for d in direct.runs)
    if added.count > 1:
        measured += f" (median of {added.count} repeats)"
    if own is not None and own.count > 1 and own.high - own.low > GAP_P99_EXTRA_MAX_MS:
        measured += (
            f"; direct's own gap p99 ranged {span_text(own.low, own.high, '.2f')} ms "
            "across repeats, more than the target: no verdict from separate runs"
        )
        return [(name, measured, "-")]
    return [(name, measured, "PASS" if added.median <= GAP_P99_EXTRA_MAX_MS else "FAIL")]


def further_checks(combined: Sequence[Combined]) -> list[Check]:
    """Checks beyond issue #6, same limits: the burst load (a thundering herd)."""
    checks: list[Check] = []
    burst_gw = next((c for c in combined if c.result.burst and c.result.path == "gateway"), None)
    if burst_gw is None:
        return checks
    several = repeats_of(combined) > 1
    r = burst_gw.result
    added = burst_gw.ttft_p50_added
    if added is not None:
        measured = f"{added.median:.2f} ms"
        if several:
            measured += f" (median; {_across(added, '.2f', ' ms')})"
        checks.append(
            (
                f"added TTFT p50 <= {ADDED_TTFT_P50_MAX_MS} ms, {r.streams} streams "
                f"arriving at {r.arrivals or 0:g}/s (burst)",
                measured,
                "PASS" if added.median <= ADDED_TTFT_P50_MAX_MS else "FAIL",
            )
        )
    extra = _median(burst_gw.gap_p99_added)
    if extra is not None:
        median_of = f" (median of {repeats_of(combined)} repeats)" if several else ""
        checks.append(
            (
                f"gap p99 within {GAP_P99_EXTRA_MAX_MS} ms of direct, burst load",
                f"{extra:+.2f} ms at {r.label}{median_of}",
                "PASS" if extra <= GAP_P99_EXTRA_MAX_MS else "FAIL",
            )
        )
    return checks


def budget_text(checks: Iterable[tuple[str, str, str]]) -> str:
    return "\n".join(f"  {v}  {name}: {measured}" for name, measured, v in checks)


def budget_markdown(
    checks: Iterable[tuple[str, str, str]], title: str = "target (issue #6)"
) -> str:
    lines = [f"| {title} | measured | |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {v} |" for name, measured, v in checks]
    return "\n".join(lines)


def _error_bars(spreads: Sequence[Spread]) -> list[list[float]] | None:
    """Matplotlib's yerr for min-max across repeats (None over one repeat)."""
    if all(s.count < 2 for s in spreads):
        return None
    return [[s.median - s.low for s in spreads], [s.high - s.median for s in spreads]]


def chart(combined: Sequence[Combined], out: Path) -> Path | None:
    """CPU per token and added TTFT at N streams (probes) against streams (paced loads, not
    the burst), one line per path; a load without probes has no TTFT point. Medians across
    repeats, with min-max bars on CPU and TTFT p50 when there are several."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    paced = [c for c in combined if c.result.paced and not c.result.burst]
    fig, (cpu_ax, ttft_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    lines = (
        ("nginx", "s-", "tab:blue"),
        ("gateway", "o-", "tab:orange"),
        # --baseline: another checkout's gateway, drawn beside this one.
        ("baseline", "x--", "tab:purple"),
        ("litellm", "^-", "tab:red"),
        ("go-reframe", "d-", "tab:green"),
    )
    for path, style, color in lines:
        runs = sorted((c for c in paced if c.result.path == path), key=lambda c: c.result.streams)
        cpu = [(c.result.streams, c.cpu_us) for c in runs if c.cpu_us is not None]
        cpu_ax.errorbar(
            [x for x, _ in cpu],
            [s.median for _, s in cpu],
            yerr=_error_bars([s for _, s in cpu]),
            fmt=style,
            color=color,
            capsize=3,
            label=path,
        )
        for pct, dash in (("p50", "-"), ("p99", ":")):
            points = [
                (c.result.streams, c.probe_p50_added if pct == "p50" else c.probe_p99_added)
                for c in runs
            ]
            known = [(x, s) for x, s in points if s is not None]
            if known:
                spreads = [s for _, s in known]
                ttft_ax.errorbar(
                    [x for x, _ in known],
                    [s.median for s in spreads],
                    yerr=_error_bars(spreads) if pct == "p50" else None,
                    fmt=style[0] + dash,
                    color=color,
                    capsize=3,
                    label=f"{path} {pct}",
                )
    sims = sorted((c.result for c in paced if c.result.path == "direct"), key=lambda r: r.streams)
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
    if any(c.result.path == "litellm" for c in paced):
        # LiteLLM spends tens of times the others' CPU per token and adds seconds to the
        # first token: linear axes would flatten nginx and the gateway to a line. symlog,
        # because an added TTFT can be below zero; linear within 1 ms of zero.
        cpu_ax.set_yscale("log")
        ttft_ax.set_yscale("symlog", linthresh=1.0)
    ttft_ax.set(
        xscale="log",
        xlabel="concurrent streams",
        ylabel="ms over direct",
        title="added time to first token of a new request at N streams",
    )
    n = repeats_of(combined)
    if n > 1:
        fig.suptitle(f"medians of {n} repeats; bars: lowest to highest repeat", fontsize=9)
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
    combined: Sequence[Combined],
    header: str,
    profile_md: str | None,
    chart_path: Path | None,
    paired_md: str | None = None,
    paired_gap: Check | None = None,
    paired_ttft: Check | None = None,
) -> None:
    """Regenerate ``path`` above KEEP_MARKER, keeping the hand-written part below it.
    ``paired_md``, ``paired_gap``, ``paired_ttft``: the paired runs' table and budget lines
    (``paired``)."""
    kept = ""
    if path.exists():
        old = path.read_text()
        if KEEP_MARKER in old:
            kept = old.split(KEEP_MARKER, 1)[1]
    # The header says what the figures are (medians, ranges) when there are repeats.
    parts = [header, "", "## Figures", "", markdown_table(combined), ""]
    if paired_md:
        parts += ["## Paired with direct in the same run: gaps and TTFT", "", paired_md, ""]
    parts += [
        "## Budget (issue #6)",
        "",
        budget_markdown(budget(combined, paired_gap, paired_ttft)),
        "",
    ]
    further = further_checks(combined)
    if further:
        title = "check (same limits)"
        parts += ["## Further checks, beyond the issue", "", budget_markdown(further, title), ""]
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


def runs_from_json(data: dict[str, Any]) -> list[RunResult]:
    """The runs of a ``results.json`` (what ``to_json`` wrote), to combine and chart again."""
    return [RunResult(**run) for run in data["runs"]]


def to_json(results: Sequence[RunResult], combined: Sequence[Combined]) -> dict[str, object]:
    """Every run (``repeat`` 1..N) and the combined rows (``repeat`` null, ``repeats`` N,
    and ``spread``: median, low, high and count of each figure that has one)."""
    rows = []
    for c in combined:
        spread = {k: None if v is None else dataclasses.asdict(v) for k, v in c.spreads().items()}
        rows.append({**dataclasses.asdict(c.result), "repeats": c.repeats, "spread": spread})
    return {
        "repeats": repeats_of(combined),
        "runs": [dataclasses.asdict(r) for r in results],
        "combined": rows,
    }
