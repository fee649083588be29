"""``--pin`` (each role on its own CPUs through taskset), its layout script, and the
start-up bench: they run and say what they did; no figure they print is asserted."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.run import pin_layout  # noqa: E402
from bench.services import PINS, pinned  # noqa: E402

RUN_TIMEOUT_S = 120


def test_pin_layout_reads_roles_and_refuses_the_rest() -> None:
    assert pin_layout("middle=2,sim=4-5,lg=6-7") == {"middle": "2", "sim": "4-5", "lg": "6-7"}
    assert pin_layout("") == {}
    for bad in ("gateway=2", "middle=two", "middle", "sim=1,2"):
        with pytest.raises(argparse.ArgumentTypeError):
            pin_layout(bad)


def test_pinned_wraps_a_command_only_for_a_pinned_role() -> None:
    PINS.clear()
    try:
        assert pinned("middle", ["nginx"]) == ["nginx"]
        PINS["middle"] = "1"
        assert pinned("middle", ["nginx", "-c", "x"]) == ["taskset", "-c", "1", "nginx", "-c", "x"]
        assert pinned("sim", ["python"]) == ["python"]
    finally:
        PINS.clear()


def test_a_pinned_command_runs_on_its_cpus_only() -> None:
    cpu = str(sorted(os.sched_getaffinity(0))[-1])
    PINS["lg"] = cpu
    try:
        cmd = pinned(
            "lg", [sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"]
        )
    finally:
        PINS.clear()
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=30).stdout
    assert out.strip() == f"[{cpu}]"


def test_the_pinned_ttft_script_refuses_a_small_machine_and_says_why() -> None:
    if (os.cpu_count() or 0) >= 8:
        pytest.skip("this machine is big enough: the script would run the full bench")
    done = subprocess.run(
        ["bash", "bench/pinned-ttft.sh"], cwd=REPO, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "needs 8 or more" in done.stderr


def test_startup_bench_times_each_tree_and_prints_the_floors() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.startup", "--starts", "1", "--baseline", str(REPO)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ")]
    names = [row.split("|")[1].strip() for row in rows[1:]]
    assert {"gateway", "baseline"} <= set(names), done.stdout
    assert any(name.startswith("python + runtime deps") for name in names), done.stdout
    gateway = next(row for row in rows if row.split("|")[1].strip() == "gateway")
    listening_ms = float(gateway.split("|")[2].split()[0])
    assert listening_ms > 0
