"""Alerts that reach people: GPU memory, nodes leaving and rejoining, a full queue, Ollama
errors; logged, counted and sent to webhooks (generic JSON or a chat robot).

Theory of operation
-------------------
Three pure decisions, each a small class with no clock or I/O of its own:

- ``Hysteresis``: one armed flag per GPU. An armed GPU at or over its threshold fires once
  and disarms; it re-arms (and says so: a "resolved" message) only when its value drops
  below ``threshold - margin``. A value hovering at the line alerts once, not on every
  sample. The threshold is ``alerts.gpu_memory_percent`` of the GPU's memory or, when set,
  ``alerts.gpu_memory_used`` bytes; the margin is ``alerts.hysteresis_percent`` of the
  GPU's memory in both cases (one knob, and a margin that scales with the card).
- ``RateWatch``: a counter's increase over the last minute, from samples of its running
  total; over the limit means "sustained" (503s for a full queue, Ollama errors).
- ``Cooldown``: at most one message per (event, node) per ``alerts.min_interval``, so a
  flapping node or a long overload sends one message, not hundreds.

``GpuAlerts`` runs them on the event loop: ``observe()`` on every GPU sample (the telemetry
cadence, ``gpu.interval``; the queue and error counters are sampled there too, so without
GPU telemetry those two alerts are off) and ``node_event()`` from the scheduler's
``on_node_event``. Each alert is logged, counted in ``LiveState.alerts[event]`` and handed
to every webhook that takes its event, as one background task per webhook (at most
``MAX_PENDING_DELIVERIES`` at once). Delivery, TLS and retries are ``telemetry.webhook``'s;
the bodies are ``telemetry.alertformat``'s. Outcomes are counted as ``webhook_sent``,
``webhook_failed`` and ``webhook_dropped``.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from clawproxy.config import WebhookConfig
from clawproxy.tasks import stop_tasks
from clawproxy.telemetry.alertformat import Alert, render, with_query
from clawproxy.telemetry.webhook import Delivery, WebhookError, post_json

if TYPE_CHECKING:
    from clawproxy.config import AlertsConfig
    from clawproxy.nodes.node import Node
    from clawproxy.telemetry.gpusample import GpuReading, GpuSample
    from clawproxy.telemetry.state import LiveState

__all__ = ["Cooldown", "GpuAlerts", "Hysteresis", "RateWatch", "WebhookError", "post_json"]

log = logging.getLogger("clawproxy.alerts")

# Webhook deliveries in flight at once; alerts are rare, so more means the receiver hangs.
MAX_PENDING_DELIVERIES = 8
# "Sustained" rates are counted over this window.
RATE_WINDOW_S = 60.0
# Samples a RateWatch keeps: a minute at gpu.interval's floor of 10 ms is 6000; past this
# many the window is shorter than a minute, which only makes the alert more cautious.
MAX_RATE_SAMPLES = 4096
GIB = 1024**3


class Hysteresis:
    """Fire once at ``threshold``; re-arm below ``threshold - margin`` (per key)."""

    def __init__(self, threshold: float, margin: float) -> None:
        self.threshold = threshold
        self.rearm_below = threshold - margin
        self._disarmed: set[Hashable] = set()

    def update(self, key: Hashable, value: float) -> str | None:
        """``"fire"``, ``"rearm"`` or None for this new ``value`` of ``key``."""
        return self.check(key, value, self.threshold, self.rearm_below)

    def check(
        self, key: Hashable, value: float, threshold: float, rearm_below: float
    ) -> str | None:
        """``update`` with this key's own threshold (GPUs of different sizes)."""
        if key in self._disarmed:
            if value < rearm_below:
                self._disarmed.discard(key)
                return "rearm"
            return None
        if value >= threshold:
            self._disarmed.add(key)
            return "fire"
        return None


class RateWatch:
    """How much a running total rose over the last ``window`` seconds."""

    def __init__(self, window: float = RATE_WINDOW_S) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque(maxlen=MAX_RATE_SAMPLES)

    def update(self, now: float, total: int) -> int:
        """Record ``total`` at ``now``; return its rise since the oldest sample in the window."""
        samples = self._samples
        samples.append((now, total))
        while now - samples[0][0] > self.window:
            samples.popleft()
        return total - samples[0][1]

    def reset(self) -> None:
        """Forget the history (after an alert, so one burst is one alert)."""
        self._samples.clear()


class Cooldown:
    """At most one message per key per ``interval`` seconds."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._last: dict[Hashable, float] = {}

    def allow(self, key: Hashable, now: float) -> bool:
        last = self._last.get(key)
        if last is not None and now - last < self.interval:
            return False
        self._last[key] = now
        return True


def webhooks_of(config: AlertsConfig) -> tuple[WebhookConfig, ...]:
    """``alerts.webhooks``, with the older ``alerts.webhook_url`` as one generic webhook."""
    legacy = () if config.webhook_url is None else (WebhookConfig(url=config.webhook_url),)
    return legacy + config.webhooks


def _gib(size: float) -> str:
    return f"{size / GIB:.1f} GiB"


class GpuAlerts:
    """Every alert of one gateway: the decisions, log lines, counters and webhook tasks."""

    def __init__(
        self,
        config: AlertsConfig,
        state: LiveState,
        loop: asyncio.AbstractEventLoop,
        *,
        delivery: Delivery | None = None,
        clock: Callable[[], float] | None = None,
        host: str | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.loop = loop
        delays = tuple(config.webhook_retry_delay * 2**i for i in range(config.webhook_retries))
        self.delivery = delivery or Delivery(
            timeout=config.webhook_timeout,
            connect_timeout=config.webhook_connect_timeout,
            delays=delays,
        )
        # Monotonic, for rates and the cooldown; replaceable by tests.
        self.clock = clock or loop.time
        self.webhooks = webhooks_of(config)
        # Each GPU's threshold and margin depend on its size: they are passed to check(),
        # so the instance's own threshold is unused here.
        off = config.gpu_memory_percent is None and config.gpu_memory_used is None
        self.memory = None if off else Hysteresis(0.0, 0.0)
        self.cooldown = Cooldown(config.min_interval)
        self.queue_full = RateWatch()
        self.upstream_errors = RateWatch()
        self._pending: set[asyncio.Task[None]] = set()
        self._host = host or socket.gethostname()

    # -- inputs ---------------------------------------------------------------------------------

    def observe(self, sample: GpuSample) -> None:
        """One GPU sample (and the telemetry tick that samples the counters)."""
        self._check_rates()
        if self.memory is None or not sample.available:
            return
        for gpu in sample.gpus:
            self._check_memory(self.memory, "", gpu)

    def observe_node(self, node: str, sample: GpuSample) -> None:
        """One node's GPUs, from its exporter page (``telemetry.remotegpu``)."""
        if self.memory is None or not sample.available:
            return
        for gpu in sample.gpus:
            self._check_memory(self.memory, node, gpu)

    def models_down(self, models: list[str], node: Node) -> None:
        """``node``'s ejection left each of ``models`` without a healthy node."""
        for model in models:
            self._raise_limited(
                Alert(
                    "model_down",
                    f"clawproxy: no node serves {model}",
                    f"Every node that serves {model} on {self._host} is out of service (the "
                    f"last was {node.name}); requests for it get 503 until one is back.",
                    self._fields(node=node.name, model=model),
                ),
                model,
            )

    def node_event(self, event: str, node: Node, reason: str) -> None:
        """``Scheduler.on_node_event``: ``"ejected"`` or ``"back"``."""
        name = node.name
        if event == "ejected":
            self._raise_limited(
                Alert(
                    "node_ejected",
                    f"clawproxy: node {name} out of service",
                    f"Node {name} was taken out of service on {self._host}: "
                    f"{reason or 'it kept failing'}. Requests go to the other nodes.",
                    self._fields(node=name, reason=reason),
                ),
                name,
            )
        elif event == "back":
            self._raise_limited(
                Alert(
                    "node_back",
                    f"clawproxy: node {name} back in service",
                    f"Node {name} is back in service on {self._host}.",
                    self._fields(node=name),
                ),
                name,
            )

    # -- decisions ------------------------------------------------------------------------------

    def _check_memory(self, memory: Hysteresis, node: str, gpu: GpuReading) -> None:
        total = gpu.memory_total_bytes
        cfg = self.config
        if cfg.gpu_memory_used is not None:
            threshold = float(cfg.gpu_memory_used)
            shown = _gib(threshold)
        else:
            assert cfg.gpu_memory_percent is not None
            threshold = total * cfg.gpu_memory_percent / 100
            shown = f"{cfg.gpu_memory_percent:g}% ({_gib(threshold)})"
        margin = total * cfg.hysteresis_percent / 100
        used = gpu.memory_used_bytes
        event = memory.check((node, gpu.index), used, threshold, threshold - margin)
        if event is None:
            return
        where = f"GPU {gpu.index} ({gpu.name}) on {node or self._host}"
        figure = f"{_gib(used)} of {_gib(total)} ({gpu.memory_percent:.1f}%)"
        fields = self._fields(
            node=node or None,
            gpu=gpu.index,
            name=gpu.name,
            memory_used_bytes=used,
            memory_total_bytes=total,
            memory_percent=round(gpu.memory_percent, 1),
            threshold_percent=cfg.gpu_memory_percent if cfg.gpu_memory_used is None else None,
            threshold_bytes=int(threshold),
        )
        model = f" Model: {self.state.model}."
        if event == "fire":
            self._raise(
                Alert(
                    "gpu_memory",
                    f"clawproxy: GPU memory high on {node or self._host}",
                    f"{where} uses {figure}, at or over the threshold of {shown}.{model}",
                    fields,
                )
            )
        else:
            self._raise(
                Alert(
                    "gpu_memory_resolved",
                    f"clawproxy: GPU memory back to normal on {node or self._host}",
                    f"{where} uses {figure}, below the threshold of {shown} again.{model}",
                    fields,
                )
            )

    def _check_rates(self) -> None:
        now = self.clock()
        cfg = self.config
        refused = self.state.admission.rejected["queue_full"]
        rise = self.queue_full.update(now, refused)
        if rise > cfg.queue_full_per_minute:
            self.queue_full.reset()
            self._raise_limited(
                Alert(
                    "queue_full",
                    f"clawproxy: requests refused on {self._host}, queue full",
                    f"{rise} requests were refused with 503 (queue full) on {self._host} "
                    f"in the last minute; the limit is {cfg.queue_full_per_minute}. "
                    f"Model: {self.state.model}.",
                    self._fields(count=rise, threshold=cfg.queue_full_per_minute),
                ),
                "",
            )
        errors = self.state.upstream_errors
        rise = self.upstream_errors.update(now, sum(errors.values()))
        if rise > cfg.upstream_errors_per_minute:
            self.upstream_errors.reset()
            kinds = ", ".join(f"{kind} {count}" for kind, count in sorted(errors.items()))
            self._raise_limited(
                Alert(
                    "upstream_errors",
                    f"clawproxy: Ollama errors on {self._host}",
                    f"{rise} requests to Ollama failed on {self._host} in the last minute; "
                    f"the limit is {cfg.upstream_errors_per_minute}. So far: {kinds}. "
                    f"Model: {self.state.model}.",
                    self._fields(count=rise, threshold=cfg.upstream_errors_per_minute),
                ),
                "",
            )

    def _fields(self, **fields: Any) -> dict[str, Any]:
        base = {"host": self._host, "time": round(time.time(), 3), "model": self.state.model}
        return base | {key: value for key, value in fields.items() if value is not None}

    # -- outputs --------------------------------------------------------------------------------

    def _raise_limited(self, alert: Alert, node: str) -> None:
        if not getattr(self.config.events, alert.event):
            return
        if not self.cooldown.allow((alert.event, node), self.clock()):
            log.info("alert %s for %s held back (alerts.min_interval)", alert.event, node or "-")
            self.state.alerts["held_back"] += 1
            return
        self._raise(alert)

    def _raise(self, alert: Alert) -> None:
        if not getattr(self.config.events, alert.event):
            return
        if alert.event == "gpu_memory_resolved" or alert.event == "node_back":
            log.info("alert resolved: %s", alert.text)
        else:
            log.warning("ALERT: %s", alert.text)
        self.state.alerts[alert.event] += 1
        for hook in self.webhooks:
            if not hook.events or alert.event in hook.events:
                self._send(hook, alert)

    def _send(self, hook: WebhookConfig, alert: Alert) -> None:
        if len(self._pending) >= MAX_PENDING_DELIVERIES:
            log.warning(
                "alert webhook: %d deliveries still pending; dropped one", len(self._pending)
            )
            self.state.alerts["webhook_dropped"] += 1
            return
        rendered = render(hook.format, alert, now=time.time(), secret=hook.secret)
        url = with_query(hook.url, rendered.query)
        task = self.loop.create_task(self._deliver(hook, url, rendered.body))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _deliver(self, hook: WebhookConfig, url: str, body: bytes) -> None:
        if await self.delivery.send(url, body, ca_file=hook.ca_file):
            self.state.alerts["webhook_sent"] += 1
        else:
            self.state.alerts["webhook_failed"] += 1

    async def wait_idle(self) -> None:
        """Wait for every webhook delivery in flight (tests and shutdown use it)."""
        while self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

    async def close(self) -> None:
        await stop_tasks(self._pending)
