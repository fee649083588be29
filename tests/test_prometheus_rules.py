"""contrib/prometheus: the alerting rules pass ``promtool check rules``, their unit tests
pass ``promtool test rules``, and every metric they name is one the gateway exports."""

from __future__ import annotations

import re
import time

import yaml
from contrib_helpers import CONTRIB, need, run

from clawproxy.config import Config
from clawproxy.telemetry import metrics
from clawproxy.telemetry.gpusample import GpuReading, GpuSample
from clawproxy.telemetry.state import LiveState

RULES = CONTRIB / "prometheus" / "clawproxy-rules.yml"
RULE_TESTS = CONTRIB / "prometheus" / "clawproxy-rules.test.yml"


def test_promtool_checks_the_rules() -> None:
    result = run(need("promtool"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_pass() -> None:
    # promtool resolves rule_files relative to the test file's directory.
    result = run(need("promtool"), "test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_rule_names_exported_metrics_and_is_tested() -> None:
    state = LiveState(Config(), 0.0)
    state.gpu = GpuSample(
        available=True, gpus=(GpuReading(0, "H100", 1, 2, 3),), sampled_at=time.time()
    )
    exported = set(
        re.findall(
            r"^# TYPE (\w+)", metrics.render(state, 0.0, draining=False, version="t").decode(), re.M
        )
    )
    groups = yaml.safe_load(RULES.read_text())["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    for rule in rules:
        for name in re.findall(r"\bclawproxy_\w+", rule["expr"]):
            assert name in exported, f"{rule['alert']}: {name} is not a clawproxy metric"
        assert rule["labels"]["severity"] in ("info", "warning", "critical")
        assert rule["annotations"]["summary"]
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test["alert_rule_test"]}
    assert tested == {rule["alert"] for rule in rules}
