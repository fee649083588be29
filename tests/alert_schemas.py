"""What each chat provider documents for a robot/webhook message, as checks on a body.

Written from the providers' public documentation (the WeCom group robot page, DingTalk's
custom robot and its "加签" signature, Feishu/Lark's custom bot with signature
verification, Slack's incoming webhooks and Block Kit limits), independently of
``clawproxy.telemetry.alertformat``: a check here fails when our body would be refused
there. Signatures are recomputed the way each provider's own sample code does.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
from typing import Any

# WeCom: markdown.content is "at most 4096 bytes, UTF-8 encoded" (group robot docs).
WECOM_MARKDOWN_MAX_BYTES = 4096
# DingTalk: a robot message over 20000 bytes is refused.
DINGTALK_MAX_BYTES = 20000
# Feishu/Lark custom bot: the request body is at most 20 KB.
FEISHU_MAX_BODY_BYTES = 20 * 1024
# Slack Block Kit: at most 50 blocks; a section's text at most 3000 characters.
SLACK_MAX_BLOCKS = 50
SLACK_SECTION_MAX_CHARS = 3000
# DingTalk and Feishu refuse a timestamp more than an hour away from their clock.
MAX_CLOCK_SKEW_S = 3600


def _non_empty_str(value: Any, what: str) -> str:
    assert isinstance(value, str) and value.strip(), f"{what} must be a non-empty string"
    return value


def check_wecom(body: dict[str, Any]) -> str:
    assert set(body) == {"msgtype", "markdown"}
    assert body["msgtype"] == "markdown"
    assert set(body["markdown"]) == {"content"}
    content = _non_empty_str(body["markdown"]["content"], "markdown.content")
    assert len(content.encode("utf-8")) <= WECOM_MARKDOWN_MAX_BYTES
    return content


def check_dingtalk(body: dict[str, Any], raw: bytes) -> str:
    assert body["msgtype"] == "markdown"
    assert set(body["markdown"]) == {"title", "text"}
    _non_empty_str(body["markdown"]["title"], "markdown.title")
    text = _non_empty_str(body["markdown"]["text"], "markdown.text")
    assert len(raw) <= DINGTALK_MAX_BYTES
    return text


def verify_dingtalk_query(query: str, secret: str) -> None:
    """``timestamp`` (ms) and ``sign`` in the query, as DingTalk's sample computes them."""
    params = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    stamp = params["timestamp"]
    assert stamp.isdigit() and abs(int(stamp) / 1000 - time.time()) < MAX_CLOCK_SKEW_S
    string_to_sign = f"{stamp}\n{secret}".encode()
    code = hmac.new(secret.encode(), string_to_sign, digestmod=hashlib.sha256).digest()
    # parse_qsl undid the URL encoding; the provider compares the decoded base64.
    assert params["sign"] == base64.b64encode(code).decode()


def check_feishu(body: dict[str, Any], raw: bytes, secret: str | None) -> str:
    assert body["msg_type"] == "text"
    assert set(body["content"]) == {"text"}
    text = _non_empty_str(body["content"]["text"], "content.text")
    assert len(raw) <= FEISHU_MAX_BODY_BYTES
    if secret is None:
        assert "sign" not in body and "timestamp" not in body
        return text
    stamp = body["timestamp"]
    assert isinstance(stamp, str) and stamp.isdigit()
    assert abs(int(stamp) - time.time()) < MAX_CLOCK_SKEW_S
    key = f"{stamp}\n{secret}".encode()
    expected = base64.b64encode(hmac.new(key, digestmod=hashlib.sha256).digest()).decode()
    assert body["sign"] == expected
    return text


def check_slack(body: dict[str, Any]) -> str:
    text = _non_empty_str(body["text"], "text")
    blocks = body.get("blocks", [])
    assert isinstance(blocks, list) and len(blocks) <= SLACK_MAX_BLOCKS
    for block in blocks:
        assert block["type"] == "section"
        assert block["text"]["type"] in ("mrkdwn", "plain_text")
        assert 0 < len(block["text"]["text"]) <= SLACK_SECTION_MAX_CHARS
    # Slack's mrkdwn: &, < and > must arrive escaped.
    assert "<" not in text and ">" not in text
    return text


def check_generic(body: dict[str, Any]) -> str:
    _non_empty_str(body["alert"], "alert")
    _non_empty_str(body["host"], "host")
    return _non_empty_str(body["message"], "message")
