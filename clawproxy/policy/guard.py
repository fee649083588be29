"""Who may use ``/v1`` and how often: API keys first, then the client's token bucket.

Theory of operation: called at the top of every ``/v1`` handler, before the body is parsed
and before admission, so a client without a valid key or over its rate costs nothing more
than the check (and a flood of bad keys grows no state: nothing is stored per failure).
The bucket is keyed by the API key's label when keys are configured, otherwise by the
client address (``X-Forwarded-For`` counts only from ``server.trusted_proxies``).
``/health`` never comes here: load balancers probe it without a key.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from clawproxy.errors import AuthenticationFailed, RateLimited
from clawproxy.policy.ratelimit import rate_identity

if TYPE_CHECKING:
    from clawproxy.gateway import Gateway
    from clawproxy.http.server import Request


def check_client(gw: Gateway, request: Request) -> None:
    """Raise 401 for a missing or wrong key, 429 over the rate limit; else return."""
    label: str | None = None
    if gw.keys.enabled:
        try:
            label = gw.keys.check_headers(request.headers)
        except AuthenticationFailed:
            gw.state.refused["auth_failed"] += 1
            raise
        # The label (a configured name or a short hash), never the key, goes to the log.
        request.extra["key"] = label
    limiter = gw.limiter
    if limiter is not None:
        try:
            limiter.check(rate_identity(label, request.client, request.headers, gw.trusted))
        except RateLimited:
            gw.state.refused["rate_limited"] += 1
            raise
