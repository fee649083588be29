"""What GPU telemetry reports: every GPU's reading at one moment, or why there is none.

Immutable: a sample replaces the previous one whole (``LiveState.gpu``), so readers
(metrics, /stats, the alerts) never see half an update.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class GpuReading:
    """One GPU at one moment."""

    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    # None where the GPU does not report it (NVML's NotSupported).
    utilization_percent: int | None

    @property
    def memory_percent(self) -> float:
        if self.memory_total_bytes <= 0:
            return 0.0
        return 100.0 * self.memory_used_bytes / self.memory_total_bytes

    def labels(self) -> tuple[tuple[str, str], ...]:
        return (("gpu", str(self.index)), ("name", self.name))

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "name": self.name,
            "memory_used_bytes": self.memory_used_bytes,
            "memory_total_bytes": self.memory_total_bytes,
            "memory_percent": round(self.memory_percent, 1),
            "utilization_percent": self.utilization_percent,
        }


@dataclass(frozen=True, slots=True)
class GpuSample:
    """Every GPU at one moment, or why there is nothing to report."""

    available: bool
    reason: str | None = None
    gpus: tuple[GpuReading, ...] = ()
    # Wall-clock time of the sample (for display only).
    sampled_at: float | None = None

    @classmethod
    def unavailable(cls, reason: str) -> GpuSample:
        return cls(available=False, reason=reason)

    def as_dict(self) -> dict[str, Any]:
        if not self.available:
            return {"available": False, "reason": self.reason}
        return {
            "available": True,
            "sampled_at": self.sampled_at,
            "gpus": [gpu.as_dict() for gpu in self.gpus],
        }
