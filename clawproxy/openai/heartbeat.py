"""SSE heartbeats while Ollama is silent before the first token.

Theory of operation: a model load can take minutes, and nginx cuts a proxied response that
stays silent longer than its ``proxy_read_timeout`` (60 s by default). So once a streaming
request is admitted, a timer fires every ``interval`` until Ollama's response head arrives
(the relay stops it then; tokens keep the line busy from there): each tick commits the SSE
head (200, once) and writes a ``: keep-alive`` comment, which every SSE client ignores
(openai-python included: PROTOCOL 4.4). The trade-off, taken knowingly: after a heartbeat
has committed the 200, an upstream error can only travel as an SSE error event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

COMMENT = b": keep-alive\n\n"


class Heartbeat:
    """Periodic SSE comments for one stream until Ollama answers."""

    __slots__ = ("_commit", "_interval", "_loop", "_timer", "_write")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        interval: float,
        commit: Callable[[], None],
        write: Callable[[bytes], None],
    ) -> None:
        self._loop = loop
        self._interval = interval
        self._commit = commit
        self._write = write
        self._timer: asyncio.TimerHandle | None = None

    def start(self) -> None:
        if self._interval > 0:
            self._timer = self._loop.call_later(self._interval, self._tick)

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._commit()
        self._write(COMMENT)
        self._timer = self._loop.call_later(self._interval, self._tick)
