"""Backpressure between one client and one upstream stream: the only owner of pause/resume.

Theory of operation: the client transport's write buffer has a high and a low water mark
(asyncio calls ``pause_writing`` above the high one and ``resume_writing`` below the low
one: hysteresis, so a buffer hovering at the line does not flap). While the client is
paused we stop reading from Ollama, so TCP pushes back on Ollama instead of the gateway
buffering tokens without bound; memory per stream is bounded by the high-water mark plus
one upstream read. A client that stays paused for ``send_timeout`` is stalled for good:
``on_stall`` aborts both sides so the slot and the GPU are freed.

Flags are idempotent: pausing twice or resuming a stream that is not paused does nothing.
Nothing else in the gateway calls ``pause_reading``/``resume_reading`` on an upstream.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Protocol

# asyncio's own defaults for a transport's write buffer (RELIABILITY 5: 64 KiB / 16 KiB).
WRITE_HIGH_WATER_BYTES = 64 * 1024
WRITE_LOW_WATER_BYTES = 16 * 1024


class Pausable(Protocol):
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class FlowControl:
    """Couples a client's write-buffer state to an upstream's reading."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        send_timeout: float,
        on_stall: Callable[[], None],
    ) -> None:
        self._loop = loop
        self._send_timeout = send_timeout
        self._on_stall = on_stall
        self._stall_timer: asyncio.TimerHandle | None = None
        self.client_paused = False
        self.upstream: Pausable | None = None

    def attach(self, upstream: Pausable) -> None:
        self.upstream = upstream
        if self.client_paused:
            upstream.pause_reading()

    def detach(self) -> None:
        if self.upstream is not None and self.client_paused:
            self.upstream.resume_reading()
        self.upstream = None

    def pause(self) -> None:
        """The client's write buffer went above the high-water mark."""
        if self.client_paused:
            return
        self.client_paused = True
        if self.upstream is not None:
            self.upstream.pause_reading()
        self._stall_timer = self._loop.call_later(self._send_timeout, self._stalled)

    def resume(self) -> None:
        """The client drained below the low-water mark."""
        if not self.client_paused:
            return
        self.client_paused = False
        self._cancel_timer()
        if self.upstream is not None:
            self.upstream.resume_reading()

    def close(self) -> None:
        self._cancel_timer()
        self.upstream = None

    def _cancel_timer(self) -> None:
        if self._stall_timer is not None:
            self._stall_timer.cancel()
            self._stall_timer = None

    def _stalled(self) -> None:
        self._stall_timer = None
        if self.client_paused:
            self._on_stall()
