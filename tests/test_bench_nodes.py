"""``python -m bench --nodes 2 --quick`` runs end to end: both sections of the node-pool
report (routing cost, throughput scaling) are written, every request completes, and the
figures are there and plausible (positive, finite). No timing is asserted: the figures
are the benchmark's job, and this machine is shared.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The quick run takes a few seconds; this bounds a hung child, not the speed.
RUN_TIMEOUT_S = 120


def test_quick_node_pool_run(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--nodes", "2", "--quick", "--out", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "Routing cost" in done.stdout and "Throughput scaling" in done.stdout
    assert "µs of gateway CPU per request (target <= 20 µs)" in done.stdout

    text = (tmp_path / "nodes" / "nodes.md").read_text()
    assert "## Routing cost" in text and "## Throughput scaling" in text
    assert "| 1 node (model.endpoint) |" in text and "| 2 nodes (nodes: list) |" in text

    runs = json.loads((tmp_path / "nodes" / "nodes.json").read_text())["runs"]
    routing = [r for r in runs if r["kind"] == "routing"]
    throughput = [r for r in runs if r["kind"] == "throughput"]
    # One round in --quick: the plain endpoint and the pool of two, then 1 and 2 nodes.
    assert [(r["pool"], r["nodes"]) for r in routing] == [(False, 1), (True, 2)]
    assert [r["nodes"] for r in throughput] == [1, 2]
    for r in runs:
        assert r["completed"] == r["requests"] > 0, r
        assert r["tokens"] == r["expected_tokens"] > 0, r
        assert r["outcomes"] == {"complete": r["requests"]}, r
        cpu = r["cpu_us_per_request"]
        assert cpu is not None and math.isfinite(cpu) and cpu > 0, r
    for r in throughput:
        assert r["cap"] == 2, r
        assert r["requests_per_s"] > 0 and r["tokens_per_s"] > 0, r
        assert r["gateway_core_pct"] is not None and r["gateway_core_pct"] > 0, r
