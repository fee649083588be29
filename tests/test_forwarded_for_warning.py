"""Per-address rate limits and a trusted loopback: any local tunnel (``ssh -L``, socat) can
choose its identity with X-Forwarded-For. The gateway says so once at start."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import pytest
from harness import Harness

# The setting that makes the identity an address: a rate, and no API keys.
PER_ADDRESS = {"gateway.rate_limit.requests_per_second": 5, "gpu.enabled": False}


def start_warnings(settings: Mapping[str, object], caplog: pytest.LogCaptureFixture) -> list[str]:
    caplog.set_level(logging.INFO)
    with Harness(settings, start_simulator=False):
        pass
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "X-Forwarded-For" in r.getMessage()
    ]


def test_per_address_limits_with_a_trusted_loopback_are_warned_about_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    (warning,) = start_warnings(PER_ADDRESS, caplog)
    assert "gateway.rate_limit" in warning and "server.trusted_proxies" in warning
    assert "127.0.0.1" in warning and "ssh -L" in warning


@pytest.mark.parametrize(
    "settings",
    [
        {**PER_ADDRESS, "gateway.rate_limit.requests_per_second": 0},  # no limits
        {**PER_ADDRESS, "auth.api_keys": ["sk-test-1"]},  # buckets per key
        {**PER_ADDRESS, "server.trusted_proxies": []},  # nobody may forward
        {**PER_ADDRESS, "server.trusted_proxies": ["10.0.0.5"]},  # nginx on another host
    ],
)
def test_no_warning_where_no_local_tunnel_can_choose_its_bucket(
    settings: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    assert start_warnings(settings, caplog) == []
