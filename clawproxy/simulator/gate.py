"""How many generations run at once: ``OLLAMA_NUM_PARALLEL`` and ``OLLAMA_MAX_QUEUE``.

Theory of operation: every generation (``/api/chat``, ``/api/generate``, ``/api/embed``
once validated) asks the ``GenerationGate`` for a ``Slot``. The decision is the pure
function ``admit``: run now while fewer than ``num_parallel`` run, else wait in a FIFO
while it has fewer than ``max_queue`` entries, else refuse, which the server turns into
Ollama's own 503. ``num_parallel=None`` never waits or refuses (the default, as before).

A slot moves WAITING -> RUNNING -> DONE (or WAITING -> DONE when its client leaves first);
``release`` is idempotent and synchronous, and hands a freed place to the oldest waiter in
the same call. The connection releases its slot from ``connection_lost`` itself rather
than waiting for its cancelled handler to unwind, so a client that aborts a stream and
immediately sends the next request finds the place free, exactly as it counted it. Hence
``active`` counts generations from acceptance to the end of their response or of their
connection, and ``peak``, its high-water mark, is exact: tests of a gateway's per-node cap
rely on it.
"""

from __future__ import annotations

import asyncio
import enum
from collections import deque
from collections.abc import Callable

__all__ = ["BUSY_MESSAGE", "GenerationGate", "Slot", "SlotState", "Verdict", "admit"]

#: Ollama's ``ErrMaxQueue`` text (server/sched.go), two spaces included, sent with a 503.
BUSY_MESSAGE = "server busy, please try again.  maximum pending requests exceeded"


class Verdict(enum.Enum):
    RUN = "run"
    WAIT = "wait"
    REFUSE = "refuse"


def admit(active: int, waiting: int, num_parallel: int | None, max_queue: int) -> Verdict:
    """Where a new generation goes, given how many run and wait now."""
    if num_parallel is None or (active < num_parallel and waiting == 0):
        return Verdict.RUN
    if waiting < max_queue:
        return Verdict.WAIT
    return Verdict.REFUSE


class SlotState(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"


class Slot:
    """One generation's place: waiting, running, or given back."""

    __slots__ = ("_gate", "_granted", "state")

    def __init__(self, gate: GenerationGate, state: SlotState) -> None:
        self._gate = gate
        self.state = state
        self._granted: asyncio.Future[None] | None = None

    def __repr__(self) -> str:
        return f"<Slot {self.state.value}>"

    async def running(self) -> None:
        """Return once this slot runs (at once unless it waits in the queue)."""
        if self.state is SlotState.WAITING:
            self._granted = asyncio.get_running_loop().create_future()
            try:
                await self._granted
            finally:
                self._granted = None
        if self.state is not SlotState.RUNNING:
            # Released while waiting: the connection is gone and this task is cancelled.
            raise asyncio.CancelledError

    def release(self) -> None:
        """Give the place back (idempotent): at the response's end or the connection's."""
        self._gate._release(self)

    def _grant(self) -> None:
        self.state = SlotState.RUNNING
        self._wake()

    def _wake(self) -> None:
        if self._granted is not None and not self._granted.done():
            self._granted.set_result(None)


class GenerationGate:
    """The only owner of "how many generations run, wait, peaked and were refused"."""

    def __init__(
        self, num_parallel: int | None, max_queue: int, on_change: Callable[[], None]
    ) -> None:
        if num_parallel is not None and num_parallel < 1:
            raise ValueError("num_parallel must be at least 1 (or None for unlimited)")
        if max_queue < 0:
            raise ValueError("max_queue must not be negative")
        self.num_parallel = num_parallel
        self.max_queue = max_queue
        self.active = 0
        self.peak = 0
        self.rejections = 0
        self._waiting: deque[Slot] = deque()
        self._on_change = on_change

    def __repr__(self) -> str:
        limit = "unlimited" if self.num_parallel is None else self.num_parallel
        return (
            f"<GenerationGate active={self.active}/{limit} "
            f"waiting={len(self._waiting)}/{self.max_queue} peak={self.peak}>"
        )

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def enter(self) -> Slot | None:
        """A running or waiting slot for a new generation, or ``None`` when full (a 503)."""
        verdict = admit(self.active, len(self._waiting), self.num_parallel, self.max_queue)
        if verdict is Verdict.REFUSE:
            self.rejections += 1
            self._on_change()
            return None
        if verdict is Verdict.WAIT:
            slot = Slot(self, SlotState.WAITING)
            self._waiting.append(slot)
        else:
            slot = Slot(self, SlotState.RUNNING)
            self._started()
        self._on_change()
        return slot

    def reset_peak(self) -> None:
        """Restart the high-water mark from what runs now."""
        self.peak = self.active

    def _started(self) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)

    def _release(self, slot: Slot) -> None:
        state, slot.state = slot.state, SlotState.DONE
        if state is SlotState.WAITING:
            self._waiting.remove(slot)
            slot._wake()
        elif state is SlotState.RUNNING:
            self.active -= 1
            # Hand the freed place on now, so no newcomer can overtake the queue.
            while self._waiting and (self.num_parallel is None or self.active < self.num_parallel):
                self._started()
                self._waiting.popleft()._grant()
        else:
            return
        self._on_change()
