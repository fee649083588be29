"""Live state shared by the public port, the admin port and the UI: one object, one snapshot.

Theory of operation: every counter and gauge the operators see lives here and nowhere
else; the HTTP layer and the handlers update it, and ``snapshot()`` renders it for health,
metrics and the UI alike, so no parallel bookkeeping can drift. Updates are plain integer
increments on one event loop: O(1) and lock-free.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from .admission import Admission
from .config import Config


class LiveState:
    """Counters, gauges and the current default model of one gateway process."""

    def __init__(self, config: Config, now: float) -> None:
        self.admission = Admission(config.gateway.max_concurrent, config.gateway.queue_size)
        # The default model; a hot load (admin port) swaps it atomically between requests.
        self.model = config.model.name
        self.started_mono = now
        self.started_wall = time.time()
        self.connections = 0
        self.requests: Counter[tuple[str, int]] = Counter()
        self.refused: Counter[str] = Counter()
        self.upstream_errors: Counter[str] = Counter()
        self.tokens_streamed = 0

    def uptime(self, now: float) -> float:
        return now - self.started_mono

    def snapshot(self, now: float) -> dict[str, Any]:
        adm = self.admission
        return {
            "model": self.model,
            "uptime_seconds": int(self.uptime(now)),
            "connections": self.connections,
            "active": adm.active,
            "queued": adm.waiting,
            "max_concurrent": adm.max_concurrent,
            "queue_size": adm.queue_size,
            "admitted": adm.admitted,
            "rejected": dict(adm.rejected),
            "refused": dict(self.refused),
            "upstream_errors": dict(self.upstream_errors),
            "tokens_streamed": self.tokens_streamed,
            "requests": [
                {"path": path, "status": status, "count": count}
                for (path, status), count in sorted(self.requests.items())
            ],
        }
