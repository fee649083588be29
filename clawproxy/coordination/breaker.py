"""When to stop asking Redis: a small circuit breaker, pure.

Theory of operation: ``FAILURES_TO_OPEN`` failed calls in a row open it: the gateway stops
asking Redis and runs degraded (or refuses, under ``on_error: fail_closed``). While open,
the caller probes Redis on its renewal cadence; the probe's success closes the breaker,
but only once the caller has re-registered the leases it holds, so Redis never sees fewer
slots taken than there are.
"""

from __future__ import annotations

# Failed Redis calls in a row that switch the gateway to degraded mode: one slow call is
# noise, three in a row (each bounded by op_timeout) is Redis in trouble.
FAILURES_TO_OPEN = 3


class Breaker:
    __slots__ = ("failures", "open", "trips")

    def __init__(self) -> None:
        self.failures = 0
        self.open = False
        self.trips = 0

    def __repr__(self) -> str:
        return f"<Breaker open={self.open} failures={self.failures} trips={self.trips}>"

    def failed(self) -> bool:
        """One failed call; True when this opens the breaker."""
        self.failures += 1
        if self.open or self.failures < FAILURES_TO_OPEN:
            return False
        self.open = True
        self.trips += 1
        return True

    def succeeded(self) -> None:
        self.failures = 0

    def close(self) -> None:
        self.open = False
        self.failures = 0
