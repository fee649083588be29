"""Alerts: GPU memory over a threshold, with hysteresis, sent to the log and a webhook.

Theory of operation
-------------------
``Hysteresis`` is the pure decision, one armed flag per GPU: an armed GPU at or over the
threshold fires once and disarms; it re-arms only when its value drops below
``threshold - hysteresis``. A value hovering at the line therefore alerts once, not on
every sample. ``GpuAlerts.observe()`` runs it on each GPU sample (on the event loop), logs
a warning per alert, counts it in ``LiveState.alerts``, and, with ``alerts.webhook_url``,
posts one JSON object per alert from a background task.

The webhook client is ``post_json()``: one HTTP/1.1 POST over an asyncio stream with h11,
``Connection: close``, the whole exchange bounded by ``alerts.webhook_timeout``. It reads
only the status line; redirects are not followed (the URL is the operator's, and a
redirect is where SSRF tricks live). A failed delivery is logged and counted, never
retried: the next alert comes with the next crossing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import h11
import orjson

from clawproxy.net import parse_http_url

if TYPE_CHECKING:
    from clawproxy.config import AlertsConfig
    from clawproxy.telemetry.gpusample import GpuSample
    from clawproxy.telemetry.state import LiveState

log = logging.getLogger("clawproxy.alerts")

# Webhook deliveries in flight at once; alerts are rare, so more means the receiver hangs.
MAX_PENDING_DELIVERIES = 8
# Bytes read per receive while waiting for the webhook's status line.
READ_CHUNK_BYTES = 4096
USER_AGENT = b"clawproxy"

Poster = Callable[[str, bytes, float], Awaitable[int]]


class WebhookError(Exception):
    """The webhook receiver did not answer with an HTTP response."""


class Hysteresis:
    """Fire once at ``threshold``; re-arm below ``threshold - margin`` (per key)."""

    def __init__(self, threshold: float, margin: float) -> None:
        self.threshold = threshold
        self.rearm_below = threshold - margin
        self._disarmed: set[int] = set()

    def update(self, key: int, value: float) -> str | None:
        """``"fire"``, ``"rearm"`` or None for this new ``value`` of ``key``."""
        if key in self._disarmed:
            if value < self.rearm_below:
                self._disarmed.discard(key)
                return "rearm"
            return None
        if value >= self.threshold:
            self._disarmed.add(key)
            return "fire"
        return None


async def post_json(url: str, body: bytes, timeout: float) -> int:
    """POST ``body`` as JSON to an http:// ``url``; return the response status.

    Raises TimeoutError, OSError, WebhookError or h11.ProtocolError.
    """
    host, port, target = parse_http_url(url)
    host_header = (f"[{host}]" if ":" in host else host).encode() + b":%d" % port
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(
        method=b"POST",
        target=target.encode(),
        headers=[
            (b"Host", host_header),
            (b"User-Agent", USER_AGENT),
            (b"Content-Type", b"application/json"),
            (b"Content-Length", b"%d" % len(body)),
            (b"Connection", b"close"),
        ],
    )
    out = (conn.send(request) or b"") + (conn.send(h11.Data(data=body)) or b"")
    out += conn.send(h11.EndOfMessage()) or b""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(out)
            await writer.drain()
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    data = await reader.read(READ_CHUNK_BYTES)
                    if not data:
                        raise WebhookError("the receiver closed the connection without answering")
                    conn.receive_data(data)
                elif isinstance(event, h11.Response):
                    return event.status_code
                # InformationalResponse (100 Continue): keep reading.
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()


class GpuAlerts:
    """GPU memory alerts for one gateway: decision, log line, counter, webhook task."""

    def __init__(
        self,
        config: AlertsConfig,
        state: LiveState,
        loop: asyncio.AbstractEventLoop,
        *,
        post: Poster = post_json,
    ) -> None:
        self.config = config
        self.state = state
        self.loop = loop
        self.post = post
        threshold = config.gpu_memory_percent
        self.memory = (
            None if threshold is None else Hysteresis(threshold, config.hysteresis_percent)
        )
        self._pending: set[asyncio.Task[None]] = set()
        self._host = socket.gethostname()

    def observe(self, sample: GpuSample) -> None:
        memory = self.memory
        if memory is None or not sample.available:
            return
        for gpu in sample.gpus:
            percent = gpu.memory_percent
            event = memory.update(gpu.index, percent)
            if event == "rearm":
                log.info("GPU %d memory back to %.1f%%; alert re-armed", gpu.index, percent)
            elif event == "fire":
                log.warning(
                    "ALERT: GPU %d (%s) memory at %.1f%% (threshold %g%%): %d of %d bytes used",
                    gpu.index,
                    gpu.name,
                    percent,
                    memory.threshold,
                    gpu.memory_used_bytes,
                    gpu.memory_total_bytes,
                )
                self.state.alerts["gpu_memory"] += 1
                self._send(
                    {
                        "alert": "gpu_memory",
                        "host": self._host,
                        "time": round(time.time(), 3),
                        "gpu": gpu.index,
                        "name": gpu.name,
                        "memory_used_bytes": gpu.memory_used_bytes,
                        "memory_total_bytes": gpu.memory_total_bytes,
                        "memory_percent": round(percent, 1),
                        "threshold_percent": memory.threshold,
                        "model": self.state.model,
                    }
                )

    def _send(self, payload: dict[str, Any]) -> None:
        url = self.config.webhook_url
        if url is None:
            return
        if len(self._pending) >= MAX_PENDING_DELIVERIES:
            log.warning(
                "alert webhook: %d deliveries still pending; dropped one", len(self._pending)
            )
            self.state.alerts["webhook_dropped"] += 1
            return
        task = self.loop.create_task(self._deliver(url, orjson.dumps(payload)))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, url: str, body: bytes) -> None:
        try:
            status = await self.post(url, body, self.config.webhook_timeout)
        except (OSError, TimeoutError, WebhookError, h11.ProtocolError) as exc:
            # The URL can carry a token in its path or query: log the host only.
            log.warning("alert webhook to %s failed: %s", _where(url), exc or type(exc).__name__)
            self.state.alerts["webhook_failed"] += 1
            return
        if 200 <= status < 300:
            self.state.alerts["webhook_sent"] += 1
        else:
            log.warning("alert webhook to %s answered HTTP %d", _where(url), status)
            self.state.alerts["webhook_failed"] += 1

    async def wait_idle(self) -> None:
        """Wait for every webhook delivery in flight (tests and shutdown use it)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        for task in list(self._pending):
            task.cancel()
        await self.wait_idle()


def _where(url: str) -> str:
    host, port, _ = parse_http_url(url)
    return f"{host}:{port}"
