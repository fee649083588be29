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

The window counts every counted request, but its latency sketches hold chat requests only
(``LATENCY_ENDPOINT``): a /health or /v1/models answer takes a millisecond and would
otherwise drag the percentiles of generations towards zero. The UI's latency chart is
drawn from the same ring (``RateWindow.report``), so it is full from the first snapshot.

Label values are bounded, because a label is a time series forever: endpoints are the
routed paths or "other" (the caller decides), and model names are only those the catalog
accepted, in its canonical form (``app.chat`` sets ``Request.model`` after the check; a
refused name stays "-"), so they are bounded by what Ollama has installed. Past
``MAX_MODEL_LABELS`` distinct names further ones count as "other" all the same.
"""

from __future__ import annotations

import math
import time
from bisect import bisect_left, bisect_right
from collections import Counter, deque
from collections.abc import Callable
from itertools import accumulate
from operator import add
from typing import Any, Protocol

from clawproxy.config import Config
from clawproxy.http.request import Request
from clawproxy.nodes.scheduler import Scheduler
from clawproxy.telemetry.gpusample import GpuSample
from clawproxy.telemetry.histogram import DURATION_BUCKETS_S, TTFT_BUCKETS_S, Histogram

# Distinct model label values kept for metrics; the rest are "other". Real deployments
# serve a handful, and only names the catalog accepted get here; the cap is a backstop.
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
# The windows /stats summarises, in seconds.
STATS_WINDOWS = (60, 300)
# The endpoint whose requests the latency sketches and chart describe: the generations.
LATENCY_ENDPOINT = "/v1/chat/completions"
# The latency chart's resolution: percentiles per 5 s, so 60 points span the window.
LATENCY_STEP_SECONDS = 5


def sketch_index(seconds: float) -> int:
    """Bucket of a latency: 0 below 1 ms, then log-spaced, the last one above 1000 s."""
    if seconds <= SKETCH_MIN_S:
        return 0
    index = math.ceil(SKETCH_PER_DECADE * math.log10(seconds / SKETCH_MIN_S))
    return min(max(index, 1), SKETCH_SIZE - 1)


def sketch_edge(index: int) -> float:
    """Upper edge, in seconds, of sketch bucket ``index``."""
    return float(SKETCH_MIN_S * 10 ** (index / SKETCH_PER_DECADE))


def sketch_percentile(
    counts: list[int], total: int, pct: float, running: list[int] | None = None
) -> float | None:
    """The ``pct`` percentile of a sketch, interpolated log-linearly inside its bucket.
    ``running``: the sketch's running totals, when the caller has them already."""
    if total == 0:
        return None
    if running is None:
        running = list(accumulate(counts))
    rank = pct / 100 * total
    # The first bucket whose running total reaches the rank (a bisection in C, not a scan).
    index = bisect_left(running, rank) if rank > 0 else bisect_right(running, 0)
    if index >= len(counts):
        return sketch_edge(SKETCH_SIZE - 2)
    if index == 0:
        return SKETCH_MIN_S
    count = counts[index]
    seen = running[index] - count
    low, high = sketch_edge(index - 1), sketch_edge(index)
    if index == SKETCH_SIZE - 1:
        return low
    return float(low * (high / low) ** ((rank - seen) / count))


class RateWindow:
    """A ring of per-second buckets: counts, errors, tokens and two latency sketches.

    Slot ``second % size`` holds that second; a slot is cleared when a later second
    claims it, so nothing is ever swept and memory is fixed. Every request is counted;
    only ``timed`` ones (chat) enter the latency sketches.
    """

    def __init__(self, size: int = WINDOW_SECONDS) -> None:
        self.size = size
        self._stamp = [-1] * size
        self._count = [0] * size
        self._errors = [0] * size
        self._tokens = [0] * size
        # Requests in the sketches, per slot: a second without any is skipped when merging.
        self._timed = [0] * size
        self._ttft = [[0] * SKETCH_SIZE for _ in range(size)]
        self._duration = [[0] * SKETCH_SIZE for _ in range(size)]

    def add(
        self,
        now: float,
        duration: float,
        ttft: float | None,
        tokens: int,
        error: bool,
        *,
        timed: bool = True,
    ) -> None:
        second = int(now)
        slot = second % self.size
        if self._stamp[slot] != second:
            self._stamp[slot] = second
            self._count[slot] = self._errors[slot] = self._tokens[slot] = 0
            if self._timed[slot]:
                self._timed[slot] = 0
                ttft_counts, duration_counts = self._ttft[slot], self._duration[slot]
                for i in range(SKETCH_SIZE):
                    ttft_counts[i] = duration_counts[i] = 0
        self._count[slot] += 1
        self._errors[slot] += error
        self._tokens[slot] += tokens
        if timed:
            self._timed[slot] += 1
            self._duration[slot][sketch_index(duration)] += 1
            if ttft is not None:
                self._ttft[slot][sketch_index(ttft)] += 1

    def summary(self, now: float, seconds: int, span: float) -> dict[str, Any]:
        """Totals over the last ``seconds`` (``span``: how much of that the process lived)."""
        newest = int(now)
        return self._totals(newest - min(seconds, self.size) + 1, newest).summary(seconds, span)

    def report(
        self, now: float, span: float, windows: tuple[int, ...], step: int = LATENCY_STEP_SECONDS
    ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """``summary()`` of each of ``windows`` (multiples of ``step``) and the latency
        series: percentiles per ``step`` seconds over the whole ring, oldest first, the last
        step ending with the current second, None where a step had no timed request.

        One pass over the ring: the windows are merged from the steps, not from the
        seconds again (a full ring is 300 sketch merges, the costly part of a snapshot)."""
        newest = int(now)
        points = self.size // step
        first = newest - points * step + 1
        steps = [self._totals(start, start + step - 1) for start in range(first, newest + 1, step)]
        summaries = []
        for seconds in windows:
            assert seconds % step == 0 and seconds <= points * step, seconds
            merged = _Totals()
            for part in steps[-(seconds // step) :]:
                merged.add(part)
            summaries.append(merged.summary(seconds, span))
        ttft: dict[str, list[float | None]] = {f"p{pct}": [] for pct in PERCENTILES}
        duration: dict[str, list[float | None]] = {f"p{pct}": [] for pct in PERCENTILES}
        for part in steps:
            for columns, counts in ((ttft, part.ttft), (duration, part.duration)):
                for name, value in (
                    _percentiles_ms(counts).items() if part.timed else NO_PERCENTILES
                ):
                    columns[name].append(value)
        return summaries, {"step_seconds": step, "ttft_ms": ttft, "duration_ms": duration}

    def _totals(self, first: int, last: int) -> _Totals:
        """Everything recorded from second ``first`` to ``last``, both included."""
        out = _Totals()
        for second in range(first, last + 1):
            slot = second % self.size
            if self._stamp[slot] == second:
                out.count += self._count[slot]
                out.errors += self._errors[slot]
                out.tokens += self._tokens[slot]
                if self._timed[slot]:
                    out.timed += self._timed[slot]
                    # map(add) runs the loop over the sketch's buckets in C.
                    out.ttft[:] = map(add, out.ttft, self._ttft[slot])
                    out.duration[:] = map(add, out.duration, self._duration[slot])
        return out

    def per_second(self, now: float, seconds: int) -> list[int]:
        """Request counts for each of the last ``seconds`` seconds, oldest first."""
        newest = int(now)
        out = []
        for second in range(newest - seconds + 1, newest + 1):
            slot = second % self.size
            out.append(self._count[slot] if self._stamp[slot] == second else 0)
        return out


# A step with no timed request: every percentile unknown.
NO_PERCENTILES: tuple[tuple[str, None], ...] = tuple((f"p{pct}", None) for pct in PERCENTILES)


class _Totals:
    """Counts and merged latency sketches of some seconds of a ``RateWindow``."""

    __slots__ = ("count", "duration", "errors", "timed", "tokens", "ttft")

    def __init__(self) -> None:
        self.count = self.errors = self.tokens = self.timed = 0
        self.ttft = [0] * SKETCH_SIZE
        self.duration = [0] * SKETCH_SIZE

    def add(self, other: _Totals) -> None:
        self.count += other.count
        self.errors += other.errors
        self.tokens += other.tokens
        if other.timed:
            self.timed += other.timed
            self.ttft[:] = map(add, self.ttft, other.ttft)
            self.duration[:] = map(add, self.duration, other.duration)

    def summary(self, seconds: int, span: float) -> dict[str, Any]:
        """``span``: how much of the ``seconds`` the process lived (rates divide by it)."""
        span = max(min(span, float(seconds)), 1.0)
        return {
            "window_seconds": seconds,
            "requests": self.count,
            "errors": self.errors,
            "tokens": self.tokens,
            "requests_per_second": round(self.count / span, 3),
            "tokens_per_second": round(self.tokens / span, 3),
            "ttft_ms": _percentiles_ms(self.ttft),
            "duration_ms": _percentiles_ms(self.duration),
        }


def _percentiles_ms(counts: list[int]) -> dict[str, float | None]:
    running = list(accumulate(counts))
    total = running[-1]
    out: dict[str, float | None] = {}
    for pct in PERCENTILES:
        value = sketch_percentile(counts, total, pct, running)
        out[f"p{pct}"] = None if value is None else round(value * 1000, 1)
    return out


class CoordinationView(Protocol):
    """The shared-limits backend as telemetry reads it (``coordination.backend``)."""

    latency: Histogram

    def status(self) -> dict[str, Any]: ...


class LiveState:
    """Counters, gauges and the current default model of one gateway process."""

    def __init__(
        self,
        config: Config,
        now: float,
        admission: Scheduler | None = None,
        nodes: Callable[[], list[dict[str, Any]]] | None = None,
    ) -> None:
        # The slots and the queue (the gateway's node table owns them); a table with no
        # nodes when there is none (a state built alone, for a test).
        self.admission = admission or Scheduler(tuple, config.gateway.queue_size, time.monotonic)
        # Each node as ``NodeTable.describe`` tells it (GET /nodes, /stats, /metrics).
        self.nodes = nodes or list
        # Slots and rate limits shared through Redis; None: this process alone ("local").
        self.coordination: CoordinationView | None = None
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
        # Each node's GPUs from its exporter page (telemetry.remotegpu), by node name.
        self.node_gpus: dict[str, GpuSample] = {}
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
        self.window.add(now, duration, ttft, tokens, error, timed=endpoint == LATENCY_ENDPOINT)
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
            "coordination": self.coordination_status(),
            "tokens_streamed": self.tokens_streamed,
            "requests": [
                {"endpoint": endpoint, "model": model, "status": status, "count": count}
                for (endpoint, model, status), count in sorted(self.requests.items())
            ],
        }

    def coordination_status(self) -> dict[str, Any]:
        coordination = self.coordination
        return {"mode": "local"} if coordination is None else coordination.status()

    def stats(self, now: float) -> dict[str, Any]:
        """The UI's view: the snapshot plus windows, the recent requests and the GPU."""
        out = self.snapshot(now)
        lived = self.uptime(now)
        out["windows"], out["latency_series"] = self.window.report(now, lived, STATS_WINDOWS)
        out["requests_per_second_series"] = self.window.per_second(now, 60)
        out["recent"] = list(reversed(self.recent))
        out["gpu"] = self.gpu.as_dict()
        out["node_gpus"] = {name: sample.as_dict() for name, sample in self.node_gpus.items()}
        out["nodes"] = self.nodes()
        out["alerts"] = dict(self.alerts)
        return out
