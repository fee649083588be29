"""Who may use ``/v1`` and how often: API keys first, then the client's token bucket.

Theory of operation: called at the top of every ``/v1`` handler, before the body is parsed
and before admission, so a client without a valid key or over its rate costs nothing more
than the check (and a flood of bad keys grows no state: nothing is stored per failure).
The bucket is keyed by the API key's label when keys are configured, otherwise by the
client address (``X-Forwarded-For`` counts only from ``server.trusted_proxies``).
``/health`` never comes here: load balancers probe it without a key.

With limits shared by several gateway instances (``coordination``), the bucket lives in
Redis and its check is asynchronous: ``check`` then returns the client's identity and the
caller awaits ``check_shared`` with it (``app.services.Services.check_client``).
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from clawproxy.errors import AuthenticationFailed, RateLimited
from clawproxy.http.request import Request
from clawproxy.policy.auth import KeyStore
from clawproxy.policy.clientaddr import TrustedProxies
from clawproxy.policy.ratelimit import RateLimiter, rate_identity


class SharedLimiter(Protocol):
    async def check(self, identity: str) -> None:
        """Take one token from ``identity``'s shared bucket, or raise RateLimited."""


class ClientGuard:
    """The key and rate checks of one gateway; refusals count in ``refused`` by reason."""

    __slots__ = ("keys", "limiter", "refused", "shared", "trusted")

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
        # The buckets shared through Redis (then ``limiter`` is None); set by the gateway.
        self.shared: SharedLimiter | None = None

    def check(self, request: Request) -> str | None:
        """Raise 401 for a missing or wrong key, 429 over the (local) rate limit; return the
        client's identity when its shared bucket is still to be checked, else None."""
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
        elif self.shared is not None:
            return rate_identity(label, request.client, request.headers, self.trusted)
        return None

    async def check_shared(self, identity: str) -> None:
        shared = self.shared
        assert shared is not None
        try:
            await shared.check(identity)
        except RateLimited:
            self.refused["rate_limited"] += 1
            raise
