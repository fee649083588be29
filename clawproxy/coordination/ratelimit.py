"""The per-client token bucket shared by every gateway instance, in Redis.

Theory of operation: one script call per request (``scripts.RATE``, GCRA, timed by Redis's
clock) keeps one key per client identity, so three instances with a limit of 10 req/s
admit about 10 req/s in all, with the same 429 and ``Retry-After`` as the local buckets.
When Redis cannot answer (the slots' breaker is open, or this call failed), the request
falls back to a local bucket at this instance's share of the rate (the rate divided by the
live instances last counted), so a Redis outage neither stalls requests nor lifts limits.
"""

from __future__ import annotations

from collections.abc import Callable

from clawproxy.coordination import scripts
from clawproxy.coordination.link import CoordinationError, RedisLink
from clawproxy.policy.ratelimit import RateLimiter, rate_limited


class SharedRateLimiter:
    """``ClientGuard``'s shared limiter (``policy.guard.SharedLimiter``)."""

    def __init__(
        self,
        link: RedisLink,
        *,
        prefix: str,
        rate: float,
        burst: int,
        clock: Callable[[], float],
        live_instances: Callable[[], int],
    ) -> None:
        self._link = link
        self._prefix = "{" + prefix + "}:rate:"
        self.rate = rate
        self.burst = burst
        self._interval_ms = 1000.0 / rate
        self._clock = clock
        self._live = live_instances
        # (instances it was built for, the bucket) while Redis is out of reach.
        self._fallback: tuple[int, RateLimiter] | None = None

    async def check(self, identity: str) -> None:
        if not self._link.breaker.open:
            try:
                wait_ms = await self._link.run(
                    scripts.RATE, [self._prefix + identity], [self._interval_ms, self.burst]
                )
            except CoordinationError:
                pass  # this one request goes by the local bucket
            else:
                if wait_ms:
                    raise rate_limited(self.rate, self.burst, float(wait_ms) / 1000)
                return
        self._local().check(identity)

    def _local(self) -> RateLimiter:
        live = max(1, self._live())
        fallback = self._fallback
        if fallback is None or fallback[0] != live:
            limiter = RateLimiter(self.rate / live, self.burst, clock=self._clock)
            fallback = self._fallback = (live, limiter)
        return fallback[1]
