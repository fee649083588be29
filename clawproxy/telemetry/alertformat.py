"""Alert messages and the webhook bodies that carry them: generic JSON, WeCom, DingTalk,
Feishu and Slack.

Theory of operation
-------------------
Pure: an ``Alert`` (a title, one or two sentences of plain words, and the figures behind
them) goes in, the bytes to POST and any query to add to the URL come out; no clock is
read here (the caller passes the time, so signatures are testable). Each provider's body
follows its documented schema for a markdown or text message:

- ``generic``: one JSON object, the alert's own fields plus ``message`` (what clawproxy
  always sent, so existing receivers keep working).
- ``wecom`` (WeCom group robot): ``{"msgtype": "markdown", "markdown": {"content"}}``;
  ``content`` at most ``WECOM_MAX_BYTES`` of UTF-8.
- ``dingtalk`` (DingTalk custom robot): ``{"msgtype": "markdown", "markdown": {"title",
  "text"}}``; with a secret, ``timestamp`` (ms) and ``sign`` (base64 of HMAC-SHA256 of
  ``"{timestamp}\\n{secret}"`` keyed by the secret, URL-encoded) go in the URL's query.
- ``feishu`` (Feishu/Lark custom bot): ``{"msg_type": "text", "content": {"text"}}``; with a
  secret, ``timestamp`` (s) and ``sign`` (base64 of HMAC-SHA256 keyed by
  ``"{timestamp}\\n{secret}"`` over an empty message) go in the body.
- ``slack`` (incoming webhook): ``{"text", "blocks": [one mrkdwn section]}``; ``text`` is
  the notification's fallback, the block what the channel shows.

Texts are clipped to each provider's limit on a UTF-8 boundary, so an odd model name never
turns an alert into a 400.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote_plus

import orjson

FORMATS: Final = ("generic", "wecom", "dingtalk", "feishu", "slack")

# WeCom: "markdown.content ... at most 4096 bytes, UTF-8" (group robot documentation).
WECOM_MAX_BYTES: Final = 4096
# DingTalk's robot refuses a message over 20000 bytes; Feishu's custom bot a body over
# 20 KiB. We stay far below with a 4 KiB text, which no alert of ours comes near.
DINGTALK_MAX_BYTES: Final = 4096
FEISHU_MAX_BYTES: Final = 4096
# Slack: a section block's text is at most 3000 characters; ``text`` is truncated by Slack
# past 40000, we keep the same 3000.
SLACK_MAX_CHARS: Final = 3000
SLACK_MAX_BLOCKS: Final = 50


@dataclass(frozen=True, slots=True)
class Alert:
    """One message for people: what happened, in a title and plain words, with figures."""

    # gpu_memory, gpu_memory_resolved, node_ejected, node_back, queue_full, upstream_errors.
    event: str
    title: str
    text: str
    # The machine-readable side, for the generic format (host, gpu, node, model, ...).
    fields: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Rendered:
    """What to POST, and what to add to the URL's query ("" for nothing)."""

    body: bytes
    query: str = ""


def clip_utf8(text: str, max_bytes: int) -> str:
    """``text`` cut to at most ``max_bytes`` of UTF-8, never inside a character."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    return data[: max_bytes - 3].decode("utf-8", "ignore") + "..."


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's signature, URL-encoded as it goes in the query."""
    to_sign = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), to_sign, hashlib.sha256).digest()
    return quote_plus(base64.b64encode(digest).decode())


def feishu_sign(secret: str, timestamp_s: int) -> str:
    """Feishu's signature: the key is ``"{timestamp}\\n{secret}"``, the message empty."""
    key = f"{timestamp_s}\n{secret}".encode()
    return base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()


def _slack_escape(text: str) -> str:
    # Slack's mrkdwn treats these three as control characters.
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render(fmt: str, alert: Alert, *, now: float, secret: str | None = None) -> Rendered:
    """The body (and query) of ``alert`` in format ``fmt``, signed at wall-clock ``now``."""
    if fmt == "generic":
        payload = {"alert": alert.event, **alert.fields, "message": alert.text}
        return Rendered(orjson.dumps(payload))
    if fmt == "wecom":
        content = clip_utf8(f"**{alert.title}**\n{alert.text}", WECOM_MAX_BYTES)
        return Rendered(orjson.dumps({"msgtype": "markdown", "markdown": {"content": content}}))
    if fmt == "dingtalk":
        text = clip_utf8(f"#### {alert.title}\n\n{alert.text}", DINGTALK_MAX_BYTES)
        body = orjson.dumps(
            {"msgtype": "markdown", "markdown": {"title": alert.title, "text": text}}
        )
        if secret is None:
            return Rendered(body)
        stamp = int(now * 1000)
        return Rendered(body, f"timestamp={stamp}&sign={dingtalk_sign(secret, stamp)}")
    if fmt == "feishu":
        text = clip_utf8(f"{alert.title}\n{alert.text}", FEISHU_MAX_BYTES)
        payload = {"msg_type": "text", "content": {"text": text}}
        if secret is not None:
            stamp = int(now)
            payload = {"timestamp": str(stamp), "sign": feishu_sign(secret, stamp), **payload}
        return Rendered(orjson.dumps(payload))
    if fmt == "slack":
        text = _slack_escape(f"*{alert.title}*\n{alert.text}")[:SLACK_MAX_CHARS]
        section = {"type": "section", "text": {"type": "mrkdwn", "text": text}}
        return Rendered(orjson.dumps({"text": text, "blocks": [section]}))
    raise ValueError(f"unknown webhook format {fmt!r}; expected one of {', '.join(FORMATS)}")


def with_query(url: str, query: str) -> str:
    """``url`` with ``query`` appended to whatever query it already has."""
    if not query:
        return url
    return f"{url}{'&' if '?' in url else '?'}{query}"
