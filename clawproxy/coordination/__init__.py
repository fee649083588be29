"""Several gateway instances, one set of limits: each node's slots and the rate limits
shared through Redis (``coordination.backend: redis``), or this process alone (``local``).

Import order, bottom first: ``breaker`` (when to stop asking Redis, pure), ``scripts`` (the
Lua run inside Redis), ``link`` (the bounded Redis client), ``slots`` (node slots as
leases), ``ratelimit`` (the shared token bucket), ``backend`` (what the gateway builds).
"""
