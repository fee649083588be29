"""Who may use ``/v1`` and how often: API keys first, then the client's token bucket.

Theory of operation: called at the top of every ``/v1`` handler, before the body is parsed
and before admission, so a client without a valid key or over its rate costs nothing more
than the check (and a flood of bad keys grows no state: nothing is stored per failure).
The bucket is keyed by the API key's label when keys are configured, otherwise by the
client address (``X-Forwarded-For`` counts only from ``server.trusted_proxies``).
``/health`` never comes here: load balancers probe it without a key.
"""

from __future__ import annotations

from collections import Counter

from clawproxy.errors import AuthenticationFailed, RateLimited
from clawproxy.http.request import Request
from clawproxy.policy.auth import KeyStore
from clawproxy.policy.clientaddr import TrustedProxies
from clawproxy.policy.ratelimit import RateLimiter, rate_identity


class ClientGuard:
    """The key and rate checks of one gateway; refusals count in ``refused`` by reason."""

    __slots__ = ("keys", "limiter", "refused", "trusted")

    def __init__(
        self,
        keys: KeyStore,
        limiter: RateLimiter | None,
        trusted: TrustedProxies,
        refused: Counter[str],
    ) -> None:
        self.keys = keys
        self.limiter = limiter
        self.trusted = trusted
        self.refused = refused

    def check(self, request: Request) -> None:
        """Raise 401 for a missing or wrong key, 429 over the rate limit; else return."""
        label: str | None = None
        keys = self.keys
        if keys.enabled:
            try:
                label = keys.check_headers(request.headers)
            except AuthenticationFailed:
                self.refused["auth_failed"] += 1
                raise
            # The label (a configured name or a short hash), never the key, goes to the log.
            request.extra["key"] = label
        limiter = self.limiter
        if limiter is not None:
            try:
                limiter.check(rate_identity(label, request.client, request.headers, self.trusted))
            except RateLimited:
                self.refused["rate_limited"] += 1
                raise
