"""Prometheus-style histograms and the bucket bounds the gateway uses.

``Histogram`` keeps non-cumulative bucket counts, a sum and a count, updated in
O(log buckets) once per finished request, never per token; ``metrics.render`` makes the
buckets cumulative when it writes them.
"""

from __future__ import annotations

import bisect


def prom_number(value: int | float) -> str:
    """A sample value or bucket bound as Prometheus text."""
    # repr() is the shortest text that reads back as the same float; ints stay exact.
    return str(value) if isinstance(value, int) else repr(float(value))


# Time to first token: a warm model answers in tens of milliseconds, a cold load of a large
# model takes minutes (the same span as server.timeout's default up to model load times).
TTFT_BUCKETS_S: tuple[float, ...] = (
    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
# Whole requests: from a /v1/models call (milliseconds) to a long generation (minutes).
DURATION_BUCKETS_S: tuple[float, ...] = (
    0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip


class Histogram:
    """Bucket counts (non-cumulative while recording), sum and count of observations."""

    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = less or equal).
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out = []
        running = 0
        for bound, count in zip((*map(prom_number, self.bounds), "+Inf"), self.counts, strict=True):
            running += count
            out.append((bound, running))
        return out
