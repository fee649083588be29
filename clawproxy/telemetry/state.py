"""Live state shared by the public port, the admin port and the UI: one object, one snapshot.

Theory of operation: every counter and gauge the operators see lives here and nowhere
else; the HTTP layer and the handlers update it, and ``snapshot()`` renders it for health,
metrics and the UI alike, so no parallel bookkeeping can drift. Updates are plain integer
increments on one event loop: O(1) and lock-free.

Per-token work stays O(1): handlers count tokens on the ``Request``, and the gateway calls
``record_request()`` once per finished request. That call costs O(histogram buckets): the
Prometheus counters and histograms (``metrics``), a ring of per-second buckets for the UI's
rates and percentiles (``RateWindow``), and the last few requests (no prompt text, no
client address: those never leave the request).

Label values are bounded, because a label is a time series forever: endpoints are the
routed paths or "other" (the caller decides), and at most ``MAX_MODEL_LABELS`` distinct
model names are kept before further ones count as "other" (a client can name any model).
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from typing import Any

from clawproxy.config import Config
from clawproxy.http.request import Request
from clawproxy.policy.admission import Admission
from clawproxy.telemetry.gpusample import GpuSample
from clawproxy.telemetry.histogram import DURATION_BUCKETS_S, TTFT_BUCKETS_S, Histogram

# Distinct model label values kept for metrics; the rest are "other". Real deployments
# serve a handful; the cap only matters against clients inventing names.
MAX_MODEL_LABELS = 32
OTHER_LABEL = "other"
# Requests kept for the UI's "recent requests" table.
RECENT_REQUESTS = 10
# The UI's rate and percentile window: one bucket per second, five minutes.
WINDOW_SECONDS = 300
# Percentile sketch: 10 log-spaced buckets per decade from 1 ms to 1000 s, so an estimate
# is within about 12% (half a bucket) of the true value; plus one bucket each side.
SKETCH_MIN_S = 0.001
SKETCH_PER_DECADE = 10
SKETCH_DECADES = 6
SKETCH_SIZE = SKETCH_PER_DECADE * SKETCH_DECADES + 2
PERCENTILES = (50, 90, 99)


def sketch_index(seconds: float) -> int:
    """Bucket of a latency: 0 below 1 ms, then log-spaced, the last one above 1000 s."""
    if seconds <= SKETCH_MIN_S:
        return 0
    index = math.ceil(SKETCH_PER_DECADE * math.log10(seconds / SKETCH_MIN_S))
    return min(max(index, 1), SKETCH_SIZE - 1)


def sketch_edge(index: int) -> float:
    """Upper edge, in seconds, of sketch bucket ``index``."""
    return float(SKETCH_MIN_S * 10 ** (index / SKETCH_PER_DECADE))


def sketch_percentile(counts: list[int], total: int, pct: float) -> float | None:
    """The ``pct`` percentile of a sketch, interpolated log-linearly inside its bucket."""
    if total == 0:
        return None
    rank = pct / 100 * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index == 0:
                return SKETCH_MIN_S
            low, high = sketch_edge(index - 1), sketch_edge(index)
            if index == SKETCH_SIZE - 1:
                return low
            return float(low * (high / low) ** ((rank - seen) / count))
        seen += count
    return sketch_edge(SKETCH_SIZE - 2)


class RateWindow:
    """A ring of per-second buckets: counts, errors, tokens and two latency sketches.

    Slot ``second % size`` holds that second; a slot is cleared when a later second
    claims it, so nothing is ever swept and memory is fixed.
    """

    def __init__(self, size: int = WINDOW_SECONDS) -> None:
        self.size = size
        self._stamp = [-1] * size
        self._count = [0] * size
        self._errors = [0] * size
        self._tokens = [0] * size
        self._ttft = [[0] * SKETCH_SIZE for _ in range(size)]
        self._duration = [[0] * SKETCH_SIZE for _ in range(size)]

    def add(
        self, now: float, duration: float, ttft: float | None, tokens: int, error: bool
    ) -> None:
        second = int(now)
        slot = second % self.size
        if self._stamp[slot] != second:
            self._stamp[slot] = second
            self._count[slot] = self._errors[slot] = self._tokens[slot] = 0
            ttft_counts, duration_counts = self._ttft[slot], self._duration[slot]
            for i in range(SKETCH_SIZE):
                ttft_counts[i] = duration_counts[i] = 0
        self._count[slot] += 1
        self._errors[slot] += error
        self._tokens[slot] += tokens
        self._duration[slot][sketch_index(duration)] += 1
        if ttft is not None:
            self._ttft[slot][sketch_index(ttft)] += 1

    def summary(self, now: float, seconds: int, span: float) -> dict[str, Any]:
        """Totals over the last ``seconds`` (``span``: how much of that the process lived)."""
        newest = int(now)
        oldest = newest - min(seconds, self.size) + 1
        count = errors = tokens = 0
        ttft = [0] * SKETCH_SIZE
        duration = [0] * SKETCH_SIZE
        for slot in range(self.size):
            if oldest <= self._stamp[slot] <= newest:
                count += self._count[slot]
                errors += self._errors[slot]
                tokens += self._tokens[slot]
                for i, (t, d) in enumerate(
                    zip(self._ttft[slot], self._duration[slot], strict=True)
                ):
                    ttft[i] += t
                    duration[i] += d
        span = max(min(span, float(seconds)), 1.0)
        return {
            "window_seconds": seconds,
            "requests": count,
            "errors": errors,
            "tokens": tokens,
            "requests_per_second": round(count / span, 3),
            "tokens_per_second": round(tokens / span, 3),
            "ttft_ms": _percentiles_ms(ttft),
            "duration_ms": _percentiles_ms(duration),
        }

    def per_second(self, now: float, seconds: int) -> list[int]:
        """Request counts for each of the last ``seconds`` seconds, oldest first."""
        newest = int(now)
        out = []
        for second in range(newest - seconds + 1, newest + 1):
            slot = second % self.size
            out.append(self._count[slot] if self._stamp[slot] == second else 0)
        return out


def _percentiles_ms(counts: list[int]) -> dict[str, float | None]:
    total = sum(counts)
    out: dict[str, float | None] = {}
    for pct in PERCENTILES:
        value = sketch_percentile(counts, total, pct)
        out[f"p{pct}"] = None if value is None else round(value * 1000, 1)
    return out


class LiveState:
    """Counters, gauges and the current default model of one gateway process."""

    def __init__(self, config: Config, now: float) -> None:
        self.admission = Admission(config.gateway.max_concurrent, config.gateway.queue_size)
        # The default model; a hot load (admin port) swaps it atomically between requests.
        self.model = config.model.name
        self.started_mono = now
        self.started_wall = time.time()
        self.connections = 0
        # (endpoint, model, status) -> count; endpoints are routed paths or "other".
        self.requests: Counter[tuple[str, str, int]] = Counter()
        self.refused: Counter[str] = Counter()
        self.upstream_errors: Counter[str] = Counter()
        self.tokens_streamed = 0
        self.tokens_by_model: Counter[str] = Counter()
        self.ttft: dict[str, Histogram] = {}
        self.duration: dict[tuple[str, str], Histogram] = {}
        self.window = RateWindow()
        self.recent: deque[dict[str, Any]] = deque(maxlen=RECENT_REQUESTS)
        self._models: set[str] = set()
        # The latest GPU sample (the sampler replaces it whole) and alert counters.
        self.gpu = GpuSample.unavailable("not sampled yet")
        self.alerts: Counter[str] = Counter()

    def uptime(self, now: float) -> float:
        return now - self.started_mono

    def model_label(self, model: str) -> str:
        """``model`` as a metric label, or "other" once ``MAX_MODEL_LABELS`` are in use."""
        if model in self._models:
            return model
        if len(self._models) >= MAX_MODEL_LABELS:
            return OTHER_LABEL
        self._models.add(model)
        return model

    def record_request(self, request: Request, endpoint: str, now: float) -> None:
        """Account one finished user request (called once, from Gateway.request_finished)."""
        status = request.status
        model = self.model_label(request.model)
        duration = now - request.started
        ttft = None if request.first_token_at is None else request.first_token_at - request.started
        tokens = request.tokens
        self.requests[(endpoint, model, status)] += 1
        self.tokens_streamed += tokens
        if tokens:
            self.tokens_by_model[model] += tokens
        hist = self.duration.get((endpoint, model))
        if hist is None:
            hist = self.duration[(endpoint, model)] = Histogram(DURATION_BUCKETS_S)
        hist.observe(duration)
        if ttft is not None:
            hist = self.ttft.get(model)
            if hist is None:
                hist = self.ttft[model] = Histogram(TTFT_BUCKETS_S)
            hist.observe(ttft)
        outcome = request.outcome
        # A stream cut after its 200 is a failure too; a client leaving is not ours.
        error = status >= 500 or (status < 400 and outcome not in ("", "client_abort"))
        self.window.add(now, duration, ttft, tokens, error)
        self.recent.append(
            {
                "time": round(time.time(), 3),
                "endpoint": endpoint,
                "status": status,
                "model": request.model,
                "ttft_ms": None if ttft is None else round(ttft * 1000, 1),
                "duration_ms": round(duration * 1000, 1),
                "tokens": tokens,
                "outcome": outcome or "ok",
            }
        )

    def rejections(self) -> Counter[str]:
        """Requests and connections turned away, by reason (admission and HTTP layer)."""
        merged: Counter[str] = Counter(self.refused)
        merged.update(self.admission.rejected)
        return merged

    def snapshot(self, now: float) -> dict[str, Any]:
        adm = self.admission
        return {
            "model": self.model,
            "uptime_seconds": int(self.uptime(now)),
            "connections": self.connections,
            "active": adm.active,
            "queued": adm.waiting,
            "max_concurrent": adm.max_concurrent,
            "queue_size": adm.queue_size,
            "admitted": adm.admitted,
            "rejected": dict(adm.rejected),
            "refused": dict(self.refused),
            "upstream_errors": dict(self.upstream_errors),
            "tokens_streamed": self.tokens_streamed,
            "requests": [
                {"endpoint": endpoint, "model": model, "status": status, "count": count}
                for (endpoint, model, status), count in sorted(self.requests.items())
            ],
        }

    def stats(self, now: float) -> dict[str, Any]:
        """The UI's view: the snapshot plus windows, the recent requests and the GPU."""
        out = self.snapshot(now)
        lived = self.uptime(now)
        out["windows"] = [self.window.summary(now, seconds, lived) for seconds in (60, 300)]
        out["requests_per_second_series"] = self.window.per_second(now, 60)
        out["recent"] = list(reversed(self.recent))
        out["gpu"] = self.gpu.as_dict()
        out["alerts"] = dict(self.alerts)
        return out
