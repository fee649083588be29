"""Alert bodies in each webhook format, checked against each provider's documented schema
(``alert_schemas``): required fields, size limits, signatures."""

from __future__ import annotations

import json
import time

import pytest
from alert_schemas import (
    WECOM_MARKDOWN_MAX_BYTES,
    check_dingtalk,
    check_feishu,
    check_generic,
    check_slack,
    check_wecom,
    verify_dingtalk_query,
)

from clawproxy.telemetry.alertformat import (
    FORMATS,
    Alert,
    clip_utf8,
    dingtalk_sign,
    feishu_sign,
    render,
    with_query,
)

ALERT = Alert(
    "gpu_memory",
    "clawproxy: GPU memory high on gpu-host",
    "GPU 0 (H100) on gpu-host uses 76.8 GiB of 80.0 GiB (96.0%), at or over the threshold "
    "of 95% (76.0 GiB). Model: qwen3:32b.",
    {"host": "gpu-host", "gpu": 0, "memory_percent": 96.0, "model": "qwen3:32b"},
)
SECRET = "SEC0123456789abcdef"


def check(fmt: str, alert: Alert, secret: str | None = None) -> str:
    """Render ``alert`` and check it against the provider's schema; return the text shown."""
    rendered = render(fmt, alert, now=time.time(), secret=secret)
    body = json.loads(rendered.body)
    if fmt == "dingtalk":
        if secret is not None:
            verify_dingtalk_query(rendered.query, secret)
        else:
            assert rendered.query == ""
        return check_dingtalk(body, rendered.body)
    assert rendered.query == ""
    if fmt == "feishu":
        return check_feishu(body, rendered.body, secret)
    return {"wecom": check_wecom, "slack": check_slack, "generic": check_generic}[fmt](body)


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_matches_its_schema_and_names_the_figures(fmt: str) -> None:
    text = check(fmt, ALERT)
    for word in ("gpu-host", "GPU 0", "H100", "96.0%", "95%", "qwen3:32b"):
        assert word in text


@pytest.mark.parametrize("fmt", ["dingtalk", "feishu"])
def test_signed_formats_verify_with_the_shared_secret(fmt: str) -> None:
    check(fmt, ALERT, SECRET)


def test_generic_keeps_the_fields_receivers_already_read() -> None:
    body = json.loads(render("generic", ALERT, now=0.0).body)
    assert body["alert"] == "gpu_memory"
    assert body["memory_percent"] == 96.0
    assert body["model"] == "qwen3:32b"


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_huge_alert_stays_within_every_limit(fmt: str) -> None:
    # Multi-byte characters: a cut in the middle of one would be invalid UTF-8.
    huge = Alert(
        "node_ejected", "clawproxy: node n out", "节点" * 5000 + " <&> " * 10, {"host": "h"}
    )
    check(fmt, huge, SECRET if fmt in ("dingtalk", "feishu") else None)


def test_clip_utf8_never_splits_a_character() -> None:
    assert clip_utf8("abc", 3) == "abc"
    clipped = clip_utf8("é" * 3000, WECOM_MARKDOWN_MAX_BYTES)
    assert len(clipped.encode()) <= WECOM_MARKDOWN_MAX_BYTES
    assert clipped.endswith("...")


def test_signatures_match_known_values() -> None:
    # From the openssl command line, following each provider's recipe for a fixed time:
    #   printf '1600000000000\nsecret' | openssl dgst -sha256 -hmac secret -binary | base64
    # and, for Feishu, an HMAC of nothing keyed by '1600000000\nsecret' (-macopt hexkey:).
    assert dingtalk_sign("secret", 1600000000000) == (
        "XHSnLTbboLLBCrXfAQRHx6W9LkLB43RYwgcsOS2j3vs%3D"
    )
    assert feishu_sign("secret", 1600000000) == "vvU1S4ucHy95pQ90meMW66yQJ+Szge4s9g7hQUu9yP8="


def test_slack_escapes_its_control_characters() -> None:
    alert = Alert("node_back", "clawproxy: node <a> back", "Node <a> & co is back.", {})
    body = json.loads(render("slack", alert, now=0.0).body)
    assert "&lt;a&gt; &amp; co" in body["text"]


def test_unknown_format_and_queries() -> None:
    with pytest.raises(ValueError, match="unknown webhook format"):
        render("teams", ALERT, now=0.0)
    assert with_query("https://h/p", "") == "https://h/p"
    assert with_query("https://h/p", "a=1") == "https://h/p?a=1"
    assert with_query("https://h/p?t=x", "a=1") == "https://h/p?t=x&a=1"
