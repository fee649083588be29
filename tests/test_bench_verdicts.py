"""The bench's verdicts on the gap and TTFT targets: paired runs first, separate runs (for
gaps) only when their own noise allows (bench/paired.py, bench/report.py). Pure functions,
no processes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import paired, report
from bench.report import RunResult


def one_run(
    path: str,
    added: float,
    repeat: int = 1,
    label: str = "100 @ 20/s",
    lost: int = 0,
    ttft_added: float = 0.5,
) -> paired.PairedRun:
    return paired.PairedRun(
        label=label,
        streams=int(label.split()[0]),
        rate=20.0,
        path=path,
        repeat=repeat,
        gap_p99_ms=52.0 + added,
        direct_gap_p99_ms=52.0,
        tokens=20000 - lost,
        direct_tokens=20000,
        expected_tokens=20000,
        probes=40,
        probes_completed=40,
        direct_probes_completed=40,
        probe_ttft_p50_ms=1.2 + ttft_added,
        direct_probe_ttft_p50_ms=1.2,
    )


def test_paired_figure_is_the_median_of_per_run_differences() -> None:
    runs = [one_run("gateway", added, repeat=i) for i, added in enumerate((0.2, 3.0, 0.4), 1)]
    (row,) = paired.combine(runs)
    assert row.added_ms is not None
    assert (row.added_ms.median, row.added_ms.low, row.added_ms.high) == pytest.approx(
        (0.4, 0.2, 3.0)
    )
    line = paired.gap_line([row])
    assert line is not None
    _, measured, verdict = line
    assert verdict == "PASS" and "+0.40 ms at 100 @ 20/s" in measured
    assert "+0.20 to +3.00" in measured


def test_paired_verdict_takes_the_gateways_worst_load_and_ignores_nginx() -> None:
    runs = [
        one_run("nginx", 5.0),
        one_run("gateway", 0.5, label="1 @ 20/s"),
        one_run("gateway", 1.5, label="200 @ 20/s"),
    ]
    line = paired.gap_line(paired.combine(runs))
    assert line is not None and line[2] == "FAIL" and "at 200 @ 20/s" in line[1]


def test_paired_verdict_fails_when_a_token_is_lost() -> None:
    line = paired.gap_line(paired.combine([one_run("gateway", 0.1, lost=1)]))
    assert line is not None and line[2] == "FAIL" and "something lost" in line[1]


def test_paired_ttft_is_judged_at_its_stream_count_on_the_gateway() -> None:
    runs = [
        one_run("gateway", 0.0, repeat=i, ttft_added=t) for i, t in enumerate((0.4, 1.6, 0.7), 1)
    ]
    runs += [one_run("gateway", 0.0, label="200 @ 20/s", ttft_added=5.0)]
    runs += [one_run("nginx", 0.0, ttft_added=5.0)]
    line = paired.ttft_line(paired.combine(runs), 100)
    assert line is not None
    _, measured, verdict = line
    assert verdict == "PASS" and measured.startswith("0.70 ms") and "0.40-1.60 ms" in measured
    over = paired.combine([one_run("gateway", 0.0, ttft_added=1.2)])
    failed = paired.ttft_line(over, 100)
    assert failed is not None and failed[2] == "FAIL" and failed[1].startswith("1.20 ms")
    assert paired.ttft_line(over, 200) is None  # no paired run at that load


def test_paired_ttft_fails_when_a_probe_went_unanswered() -> None:
    run = one_run("gateway", 0.0, ttft_added=0.1)
    run.direct_probes_completed = 39
    line = paired.ttft_line(paired.combine([run]), 100)
    assert line is not None and line[2] == "FAIL" and "something lost" in line[1]


def test_pairable_keeps_the_doubled_rate_under_the_cap() -> None:
    assert paired.pairable(200, 20.0, 10_000.0)
    assert not paired.pairable(1000, 10.0, 10_000.0)
    assert not paired.pairable(100, 0.0, 10_000.0)  # unpaced: no gap target


def run(path: str, gap_p99: float, repeat: int) -> RunResult:
    return RunResult(
        label="100 @ 20/s",
        streams=100,
        rate=20.0,
        path=path,
        tokens=20000,
        expected_tokens=20000,
        completed=100,
        outcomes={"complete": 100},
        out_of_order=0,
        tokens_per_s=1800.0,
        wall_s=11.0,
        ttft_p50_ms=1.0,
        ttft_p99_ms=2.0,
        gap_p50_ms=50.0,
        gap_p99_ms=gap_p99,
        gap_max_ms=60.0,
        sim_cpu_us=30.0,
        sim_core_pct=10.0,
        loadgen_cpu_us=30.0,
        repeat=repeat,
    )


def in_turns(direct: list[float], gateway: list[float]) -> tuple[str, str, str]:
    results = [
        r
        for i, (d, g) in enumerate(zip(direct, gateway, strict=True), 1)
        for r in (run("direct", d, i), run("gateway", g, i))
    ]
    checks = [c for c in report.budget(report.combine(results)) if c[0].startswith("gap p99")]
    assert len(checks) == 1
    return checks[0]


def test_separate_runs_give_no_verdict_when_direct_alone_moves_more_than_the_target() -> None:
    _, measured, verdict = in_turns([51.4, 53.4, 52.0], [55.0, 53.0, 52.5])
    assert verdict == "-"
    assert "+0.50 ms" in measured and "ranged 51.40-53.40 ms" in measured


def test_separate_runs_judge_when_direct_is_steady() -> None:
    assert in_turns([52.0, 52.3, 52.1], [52.5, 52.6, 52.4])[2] == "PASS"
    assert in_turns([52.0, 52.3, 52.1], [54.0, 54.6, 54.4])[2] == "FAIL"


def test_paired_line_goes_into_the_budget_and_the_burst_out_of_it() -> None:
    line = ("gap p99 within 1.0 ms of direct (worst paired load)", "+0.30 ms", "PASS")
    burst = [
        RunResult(**{**run(path, 52.0, 1).__dict__, "label": "100 @ 20/s burst", "burst": True})
        for path in ("direct", "gateway")
    ]
    combined = report.combine(burst)
    assert line in report.budget(combined, line)
    assert not any("burst" in name for name, _, _ in report.budget(combined, line))
    assert any("burst" in name for name, _, _ in report.further_checks(combined))
