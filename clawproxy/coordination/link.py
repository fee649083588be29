"""The bounded Redis client: every call within ``op_timeout``, every failure counted.

Theory of operation: ``RedisLink`` wraps redis-py's asyncio client (the optional
``clawproxy[redis]`` extra, imported only when the backend is ``redis``). ``call()`` runs
one operation under ``asyncio.timeout(op_timeout)``; a timeout, a connection error or a
Redis error is a ``CoordinationError`` and a failure for the breaker, a success closes the
count. Latencies go to a histogram (Prometheus). Nothing here retries: the callers decide
(a slot falls back to the degraded share, a rate check to the local bucket).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from clawproxy.coordination.breaker import Breaker

log = logging.getLogger("clawproxy.coordination")

T = TypeVar("T")

MISSING_EXTRA = (
    "coordination.backend is redis but the redis package is not installed: "
    "pip install 'clawproxy[redis]'"
)


class CoordinationError(Exception):
    """A Redis call failed or took longer than ``coordination.op_timeout``."""


def read_password(path: str | None) -> str | None:
    """The password in ``coordination.password_file`` (first line), or None."""
    if path is None:
        return None
    try:
        with open(path, encoding="utf-8") as file:
            return file.readline().strip() or None
    except OSError as exc:
        raise ValueError(
            f"coordination.password_file: cannot read {path}: {exc.strerror or exc}"
        ) from None


def connect(url: str, password: str | None, op_timeout: float) -> Any:
    """A redis-py asyncio client for ``url`` (no connection is made yet)."""
    try:
        import redis.asyncio as aioredis
    except ImportError:
        raise ValueError(MISSING_EXTRA) from None
    return aioredis.Redis.from_url(
        url,
        password=password,
        socket_timeout=op_timeout,
        socket_connect_timeout=op_timeout,
        health_check_interval=0,
        decode_responses=False,
    )


class RedisLink:
    """One Redis client, its scripts and its breaker."""

    def __init__(
        self,
        client: Any,
        op_timeout: float,
        clock: Callable[[], float],
        observe: Callable[[float], None] | None = None,
    ) -> None:
        self.client = client
        self.op_timeout = op_timeout
        self._clock = clock
        self._observe = observe
        self.breaker = Breaker()
        self._scripts: dict[str, Any] = {}

    def script(self, source: str) -> Any:
        """A registered script (EVALSHA, loaded on first use)."""
        script = self._scripts.get(source)
        if script is None:
            script = self._scripts[source] = self.client.register_script(source)
        return script

    async def call(self, make: Callable[[], Awaitable[T]]) -> T:
        """One operation, bounded by ``op_timeout``; ``CoordinationError`` on any failure."""
        started = self._clock()
        try:
            async with asyncio.timeout(self.op_timeout):
                result = await make()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # redis-py's errors, OSError, TimeoutError: all the same here
            self._failed(exc)
            raise CoordinationError(f"{type(exc).__name__}: {exc}") from None
        self.breaker.succeeded()
        if self._observe is not None:
            self._observe(self._clock() - started)
        return result

    async def run(self, source: str, keys: list[str], args: list[Any]) -> Any:
        script = self.script(source)
        return await self.call(lambda: script(keys=keys, args=args))

    def _failed(self, exc: BaseException) -> None:
        if self.breaker.failed():
            log.error(
                "Redis failed %d times in a row (last: %s: %s): coordination degraded",
                self.breaker.failures,
                type(exc).__name__,
                exc,
            )

    async def close(self) -> None:
        try:
            # Bounded like every other call: a shutdown never waits on a Redis that hangs.
            async with asyncio.timeout(self.op_timeout):
                await self.client.aclose()
        except Exception as exc:  # closing a broken connection may fail; nothing to do
            log.debug("closing the Redis client: %s", exc)
