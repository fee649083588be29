"""One node's passive health: failures in a row, ejection with a doubling backoff, a trial.

Theory of operation
-------------------
Pure: no clock of its own, no I/O; every call gets ``now``. A failure (refused, reset, a
5xx before the stream, a timeout) adds to ``failures``; a success clears it. At
``eject_after`` failures in a row the node is ejected for ``eject_base`` seconds. When that
time is up the node is not simply back: exactly one request (or one probe) is let through
as a trial. Its success readmits the node and resets the backoff; its failure ejects it
again for twice as long, up to ``eject_max``. Ollama's own 503 (its queue is full) is not a
failure: the node is only ``busy`` for ``busy_backoff`` seconds, and gets no new request
meanwhile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EjectPolicy:
    eject_after: int = 3
    eject_base: float = 5.0
    eject_max: float = 300.0
    busy_backoff: float = 1.0


class Health:
    """The passive health of one node (see the module's theory of operation)."""

    __slots__ = (
        "backoff",
        "busy_until",
        "ejected_until",
        "ejections",
        "failures",
        "last_error",
        "policy",
        "trial",
    )

    def __init__(self, policy: EjectPolicy) -> None:
        self.policy = policy
        self.failures = 0
        self.ejections = 0
        # Set while ejected: the time the trial may start. None: in service.
        self.ejected_until: float | None = None
        self.backoff = policy.eject_base
        # The trial request is out: nothing else goes to the node until it ends.
        self.trial = False
        self.busy_until = -math.inf
        self.last_error = ""

    def __repr__(self) -> str:
        return (
            f"<Health failures={self.failures} ejected_until={self.ejected_until} "
            f"trial={self.trial}>"
        )

    @property
    def ejected(self) -> bool:
        return self.ejected_until is not None

    def available(self, now: float) -> bool:
        """Whether a new request may go to the node now (its slots aside)."""
        if now < self.busy_until:
            return False
        until = self.ejected_until
        return until is None or (now >= until and not self.trial)

    def ready_at(self) -> float:
        """When an unavailable node may next become available (for a waiter's timer)."""
        until = self.ejected_until
        if until is None or self.trial:
            return self.busy_until if until is None else math.inf
        return max(until, self.busy_until)

    def begin(self, now: float) -> bool:
        """A request (or probe) starts on the node; True when it is the trial."""
        if self.ejected_until is not None and now >= self.ejected_until and not self.trial:
            self.trial = True
            return True
        return False

    def end_trial(self) -> None:
        """The trial ended with no verdict (the client left first): the next one may try."""
        self.trial = False

    def succeeded(self) -> bool:
        """The node answered; True when this readmits it."""
        self.failures = 0
        if self.ejected_until is None:
            return False
        self.ejected_until = None
        self.trial = False
        self.backoff = self.policy.eject_base
        return True

    def failed(self, now: float, reason: str, *, may_eject: bool = True) -> bool:
        """A failure; True when this ejects the node (or ejects it again after its trial).
        ``may_eject`` False only counts it (a lone node is never ejected)."""
        self.failures += 1
        self.last_error = reason
        policy = self.policy
        if not may_eject and self.ejected_until is None:
            return False
        if self.ejected_until is not None:
            if not self.trial:
                return False  # a request that began before the ejection
            self.trial = False
            self.backoff = min(self.backoff * 2, policy.eject_max)
        elif self.failures < policy.eject_after:
            return False
        self.ejected_until = now + self.backoff
        self.ejections += 1
        return True

    def busy(self, now: float) -> None:
        """Ollama said its queue is full: no new request for ``busy_backoff``."""
        self.busy_until = now + self.policy.busy_backoff
