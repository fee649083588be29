"""What the gateway builds from ``coordination:``: nothing (local), or the Redis backend.

Theory of operation: with ``backend: local`` the gateway runs alone and nothing here is
used (no Redis, no extra import). With ``redis``: one ``RedisLink`` (bounded calls and the
breaker), ``SharedSlots`` installed as the scheduler's ledger, and, when rate limits are on,
``SharedRateLimiter`` as the guard's shared limiter in place of the local buckets.
``start()`` asks Redis once: if it does not answer, the gateway still starts, degraded (in
the log and on ``/health``), and comes back to shared mode when Redis does.
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
from typing import Any

from clawproxy.config import CoordinationConfig, RateLimitConfig
from clawproxy.coordination.link import CoordinationError, RedisLink, connect, read_password
from clawproxy.coordination.ratelimit import SharedRateLimiter
from clawproxy.coordination.slots import SharedSlots
from clawproxy.nodes.table import NodeTable
from clawproxy.policy.guard import ClientGuard
from clawproxy.telemetry.histogram import Histogram

log = logging.getLogger("clawproxy.coordination")

# Redis call latencies (seconds): loopback answers in ~0.1 ms, a LAN in ~0.5 ms, and
# op_timeout (50 ms) bounds them all.
REDIS_BUCKETS_S = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1)


def instance_id() -> str:
    """A name for this process in Redis: host, pid and a random part (a restarted process
    is a new instance; its old leases expire)."""
    return f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"


class Coordination:
    """The Redis backend of one gateway process."""

    def __init__(
        self,
        config: CoordinationConfig,
        rate: RateLimitConfig,
        nodes: NodeTable,
        guard: ClientGuard,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        if not config.url:
            raise ValueError("coordination.url: required with backend redis")
        self.latency = Histogram(REDIS_BUCKETS_S)
        client: Any = connect(config.url, read_password(config.password_file), config.op_timeout)
        self.link = RedisLink(client, config.op_timeout, loop.time, self.latency.observe)
        scheduler = nodes.scheduler
        self.slots = SharedSlots(
            self.link,
            prefix=config.key_prefix,
            instance=instance_id(),
            lease_ttl=config.lease_ttl,
            fail_closed=config.on_error == "fail_closed",
            nodes=nodes.nodes,
            on_released=scheduler.pump,
        )
        scheduler.ledger = self.slots
        if rate.requests_per_second > 0:
            guard.limiter = None
            guard.shared = SharedRateLimiter(
                self.link,
                prefix=config.key_prefix,
                rate=rate.requests_per_second,
                burst=rate.burst,
                clock=loop.time,
                live_instances=lambda: self.slots.live_instances,
            )

    async def start(self) -> None:
        link = self.link
        try:
            await link.call(link.client.ping)
        except CoordinationError as exc:
            link.breaker.open = True
            self.slots.start_degraded(f"Redis did not answer at start ({exc})")
        # The first renewal is the heartbeat that counts this instance live (or, degraded,
        # the probe that brings Redis back).
        self.slots.start()

    async def stop(self) -> None:
        await self.slots.close()
        await self.link.close()

    def status(self) -> dict[str, Any]:
        slots = self.slots
        return {
            "mode": slots.mode(),
            "instance": slots.instance,
            "live_instances": slots.live_instances,
            "held_leases": len(slots.held),
            "lease_lost": slots.counts["lease_lost"],
            "lease_reclaimed": slots.counts["lease_reclaimed"],
            "breaker_trips": slots.counts["breaker_trips"],
        }
