"""Prometheus text exposition (format 0.0.4) of the live state, written by hand.

Theory of operation: ``LiveState`` owns every number; this module only renders. ``render()``
walks the state once per scrape and writes ``# HELP``/``# TYPE`` lines and samples; the
state's histograms (``histogram``) are made cumulative here, on render.

Naming follows Prometheus conventions: a ``clawproxy_`` prefix, base units (seconds,
bytes), ``_total`` on counters, ratios in 0..1. Label values are escaped as the format
requires (backslash, double quote, newline), so a model name cannot break the output.
"""

from __future__ import annotations

from collections.abc import Iterable

from clawproxy.telemetry.histogram import Histogram, prom_number
from clawproxy.telemetry.state import LiveState

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


def escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Iterable[tuple[str, str]]) -> str:
    inner = ",".join(f'{name}="{escape_label(value)}"' for name, value in pairs)
    return "{" + inner + "}" if inner else ""


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: Iterable[tuple[str, str]], value: int | float) -> None:
        self.lines.append(f"{name}{_labels(labels)} {prom_number(value)}")

    def histogram(self, name: str, labels: tuple[tuple[str, str], ...], hist: Histogram) -> None:
        for bound, running in hist.cumulative():
            self.lines.append(f"{name}_bucket{_labels((*labels, ('le', bound)))} {running}")
        self.sample(f"{name}_sum", labels, hist.sum)
        self.sample(f"{name}_count", labels, hist.count)


def render(state: LiveState, now: float, *, draining: bool, version: str) -> bytes:
    """The whole exposition for one scrape."""
    w = _Writer()
    w.family("clawproxy_info", "gauge", "Build and configuration of this gateway (value 1).")
    w.sample("clawproxy_info", (("version", version), ("default_model", state.model)), 1)
    w.family("clawproxy_uptime_seconds", "gauge", "Seconds since the gateway started.")
    w.sample("clawproxy_uptime_seconds", (), round(state.uptime(now), 3))
    w.family("clawproxy_draining", "gauge", "1 while the gateway drains for shutdown.")
    w.sample("clawproxy_draining", (), int(draining))

    w.family("clawproxy_requests_total", "counter", "Finished requests by endpoint, model, status.")
    for (endpoint, model, status), count in sorted(state.requests.items()):
        labels = (("endpoint", endpoint), ("model", model), ("status", str(status)))
        w.sample("clawproxy_requests_total", labels, count)
    w.family("clawproxy_tokens_streamed_total", "counter", "Completion tokens sent, by model.")
    for model, count in sorted(state.tokens_by_model.items()):
        w.sample("clawproxy_tokens_streamed_total", (("model", model),), count)
    w.family(
        "clawproxy_time_to_first_token_seconds",
        "histogram",
        "From the request's arrival to its first token, by model.",
    )
    for model, hist in sorted(state.ttft.items()):
        w.histogram("clawproxy_time_to_first_token_seconds", (("model", model),), hist)
    w.family(
        "clawproxy_request_duration_seconds",
        "histogram",
        "From the request's arrival to its end, by endpoint and model.",
    )
    for (endpoint, model), hist in sorted(state.duration.items()):
        pair = (("endpoint", endpoint), ("model", model))
        w.histogram("clawproxy_request_duration_seconds", pair, hist)

    adm = state.admission
    w.family("clawproxy_active_requests", "gauge", "Requests holding a slot with Ollama.")
    w.sample("clawproxy_active_requests", (), adm.active)
    w.family("clawproxy_queued_requests", "gauge", "Requests waiting for a slot.")
    w.sample("clawproxy_queued_requests", (), adm.waiting)
    w.family("clawproxy_max_concurrent", "gauge", "Slots with Ollama (gateway.max_concurrent).")
    w.sample("clawproxy_max_concurrent", (), adm.max_concurrent)
    w.family("clawproxy_open_connections", "gauge", "Open client connections.")
    w.sample("clawproxy_open_connections", (), state.connections)
    w.family("clawproxy_rejections_total", "counter", "Requests or connections turned away.")
    for reason, count in sorted(state.rejections().items()):
        w.sample("clawproxy_rejections_total", (("reason", reason),), count)
    w.family("clawproxy_upstream_errors_total", "counter", "Failures talking to Ollama, by kind.")
    for kind, count in sorted(state.upstream_errors.items()):
        w.sample("clawproxy_upstream_errors_total", (("kind", kind),), count)
    w.family("clawproxy_alerts_total", "counter", "Alerts raised, and webhook deliveries.")
    for event, count in sorted(state.alerts.items()):
        w.sample("clawproxy_alerts_total", (("event", event),), count)

    _render_nodes(w, state)
    _render_coordination(w, state)
    _render_gpu(w, state)
    w.lines.append("")
    return "\n".join(w.lines).encode()


# A node's states, one gauge each (1 for the state it is in), so an alert rule can say
# ``clawproxy_node_state{state="ejected"} == 1``.
NODE_STATES = ("up", "ejected", "draining", "disabled")


def _render_nodes(w: _Writer, state: LiveState) -> None:
    rows = state.nodes()
    w.family("clawproxy_node_inflight", "gauge", "Generations running on each node.")
    for row in rows:
        w.sample("clawproxy_node_inflight", (("node", row["name"]),), row["inflight"])
    w.family("clawproxy_node_capacity", "gauge", "Each node's cap (its max_concurrent).")
    for row in rows:
        w.sample("clawproxy_node_capacity", (("node", row["name"]),), row["max_concurrent"])
    w.family("clawproxy_node_state", "gauge", "1 for the state each node is in.")
    for row in rows:
        for name in NODE_STATES:
            labels = (("node", row["name"]), ("state", name))
            w.sample("clawproxy_node_state", labels, int(row["state"] == name))
    w.family("clawproxy_node_requests_total", "counter", "Requests given a slot on each node.")
    for row in rows:
        w.sample("clawproxy_node_requests_total", (("node", row["name"]),), row["requests"])
    w.family(
        "clawproxy_node_failovers_total",
        "counter",
        "Requests moved off each node before any byte reached the client, by reason.",
    )
    for row in rows:
        for reason, count in sorted(row["failovers"].items()):
            labels = (("node", row["name"]), ("reason", reason))
            w.sample("clawproxy_node_failovers_total", labels, count)
    w.family("clawproxy_node_ejections_total", "counter", "Times each node was ejected.")
    for row in rows:
        w.sample("clawproxy_node_ejections_total", (("node", row["name"]),), row["ejections"])


COORDINATION_MODES = ("local", "redis", "degraded", "fail_closed")


def _render_coordination(w: _Writer, state: LiveState) -> None:
    status = state.coordination_status()
    w.family(
        "clawproxy_coordination_mode", "gauge", "1 for how slots and rate limits are shared now."
    )
    for mode in COORDINATION_MODES:
        w.sample("clawproxy_coordination_mode", (("mode", mode),), int(status["mode"] == mode))
    coordination = state.coordination
    if coordination is None:
        return
    w.family("clawproxy_coordination_instances", "gauge", "Gateway instances alive in Redis.")
    w.sample("clawproxy_coordination_instances", (), status["live_instances"])
    for name, what in (
        ("lease_lost", "Leases found gone from Redis at renewal."),
        ("lease_reclaimed", "Expired leases (of stopped instances) dropped from Redis."),
        ("breaker_trips", "Times Redis failed enough for coordination to degrade."),
    ):
        w.family(f"clawproxy_{name}_total", "counter", what)
        w.sample(f"clawproxy_{name}_total", (), status[name])
    w.family("clawproxy_redis_op_seconds", "histogram", "Latency of the calls to Redis.")
    w.histogram("clawproxy_redis_op_seconds", (), coordination.latency)


def _render_gpu(w: _Writer, state: LiveState) -> None:
    sample = state.gpu
    w.family("clawproxy_gpu_available", "gauge", "1 when NVML reports GPUs, else 0.")
    w.sample("clawproxy_gpu_available", (), int(sample.available))
    # The gateway's own GPUs (NVML) without a node label, each node's (its exporter) with it.
    readings = [(gpu, gpu.labels()) for gpu in sample.gpus]
    for node, remote in sorted(state.node_gpus.items()):
        readings += [(gpu, (*gpu.labels(), ("node", node))) for gpu in remote.gpus]
    w.family("clawproxy_gpu_memory_used_bytes", "gauge", "GPU memory in use, per GPU.")
    for gpu, labels in readings:
        w.sample("clawproxy_gpu_memory_used_bytes", labels, gpu.memory_used_bytes)
    w.family("clawproxy_gpu_memory_total_bytes", "gauge", "GPU memory installed, per GPU.")
    for gpu, labels in readings:
        w.sample("clawproxy_gpu_memory_total_bytes", labels, gpu.memory_total_bytes)
    w.family("clawproxy_gpu_utilization_ratio", "gauge", "GPU busy fraction (0-1), per GPU.")
    for gpu, labels in readings:
        if gpu.utilization_percent is not None:
            w.sample("clawproxy_gpu_utilization_ratio", labels, gpu.utilization_percent / 100)
