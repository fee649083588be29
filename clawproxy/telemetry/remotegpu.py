"""GPU telemetry for remote nodes: each node's exporter page, read on the telemetry cadence.

Theory of operation
-------------------
NVML sees only the GPUs of the gateway's own box. A node may name ``gpu_metrics_url``: the
Prometheus page of NVIDIA's ``dcgm-exporter`` (``DCGM_FI_DEV_FB_USED``/``_FREE`` in MiB,
``DCGM_FI_DEV_GPU_UTIL`` in percent, one series per ``gpu`` label, ``modelName`` the card)
or of ``nvidia_gpu_exporter`` (``nvidia_smi_memory_used_bytes``/``_total_bytes``,
``nvidia_smi_utilization_gpu_ratio``, one series per ``uuid``, the index and name in
``nvidia_smi_gpu_info``). Every ``gpu.interval`` all of them are fetched side by side
(``telemetry.scrape``, bounded in time and size), read with the strict reader
(``telemetry.promtext``) for just those series, and each node's ``GpuSample`` replaces the
last one in ``LiveState.node_gpus``; the alerts see it under the node's name. A page that
cannot be read makes that node's sample "unavailable, because ...", never a stale reading.
Off the hot path: one background task, nothing on a request's way.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Protocol

from clawproxy.nodes.node import Node
from clawproxy.tasks import stop_task
from clawproxy.telemetry.gpusample import GpuReading, GpuSample
from clawproxy.telemetry.promtext import Sample, read_series
from clawproxy.telemetry.scrape import ScrapeError, fetch_text

log = logging.getLogger("clawproxy.gpu")

MIB = 1024 * 1024
# An exporter's page for an 8-GPU box is tens of KiB; this bounds a wrong URL's.
MAX_PAGE_BYTES = 4 * MIB
# No GPU has more memory than this (the largest today hold 288 GB); past it, wrong units.
MAX_GPU_MEMORY_BYTES = 4 * 1024**4
# A scrape may take at most this share of the cadence (and this long to connect).
CONNECT_TIMEOUT_S = 2.0

DCGM_USED, DCGM_FREE, DCGM_UTIL = (
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_GPU_UTIL",
)
SMI_USED, SMI_TOTAL = "nvidia_smi_memory_used_bytes", "nvidia_smi_memory_total_bytes"
SMI_UTIL, SMI_INFO = "nvidia_smi_utilization_gpu_ratio", "nvidia_smi_gpu_info"
SERIES = frozenset({DCGM_USED, DCGM_FREE, DCGM_UTIL, SMI_USED, SMI_TOTAL, SMI_UTIL, SMI_INFO})


def sample_from_page(text: str, sampled_at: float) -> GpuSample:
    """The GPUs on one exporter page (dcgm-exporter's or nvidia_gpu_exporter's)."""
    try:
        samples = read_series(text, SERIES)
    except ValueError as exc:
        return GpuSample.unavailable(f"unreadable metrics page: {exc}")
    names = {s.name for s in samples}
    if DCGM_USED in names:
        gpus = _dcgm(samples)
    elif SMI_USED in names:
        gpus = _smi(samples)
    else:
        return GpuSample.unavailable("no dcgm-exporter or nvidia_gpu_exporter series on the page")
    for gpu in gpus:
        # Wrong units or a confused exporter: refuse the page rather than alert on nonsense.
        if not 0 <= gpu.memory_used_bytes <= gpu.memory_total_bytes <= MAX_GPU_MEMORY_BYTES:
            return GpuSample.unavailable(f"implausible memory figures for GPU {gpu.index}")
    return GpuSample(available=True, gpus=gpus, sampled_at=sampled_at)


def _bytes(value: float) -> int:
    """A byte count; NaN or infinite (a broken exporter) becomes -1, refused above."""
    return int(value) if math.isfinite(value) else -1


def _percent(value: float | None) -> int | None:
    if value is None or not math.isfinite(value):
        return None
    return min(100, max(0, round(value)))


def _dcgm(samples: list[Sample]) -> tuple[GpuReading, ...]:
    by_gpu: dict[str, dict[str, float]] = defaultdict(dict)
    names: dict[str, str] = {}
    for s in samples:
        gpu = s.labels.get("gpu", "0")
        by_gpu[gpu][s.name] = s.value
        names.setdefault(gpu, s.labels.get("modelName", "GPU"))
    readings: list[GpuReading] = []
    for gpu, values in by_gpu.items():
        used = values.get(DCGM_USED, 0.0)
        total = used + values.get(DCGM_FREE, 0.0)
        util = values.get(DCGM_UTIL)
        readings.append(
            GpuReading(
                index=int(gpu) if gpu.isdigit() else len(readings),
                name=names[gpu],
                memory_used_bytes=_bytes(used * MIB),
                memory_total_bytes=_bytes(total * MIB),
                utilization_percent=_percent(util),
            )
        )
    return tuple(sorted(readings, key=lambda r: r.index))


def _smi(samples: list[Sample]) -> tuple[GpuReading, ...]:
    by_uuid: dict[str, dict[str, float]] = defaultdict(dict)
    info: dict[str, dict[str, str]] = {}
    for s in samples:
        uuid = s.labels.get("uuid", "")
        if s.name == SMI_INFO:
            info[uuid] = s.labels
        else:
            by_uuid[uuid][s.name] = s.value
    readings: list[GpuReading] = []
    for position, (uuid, values) in enumerate(by_uuid.items()):
        labels = info.get(uuid, {})
        index = labels.get("index", "")
        util = values.get(SMI_UTIL)
        readings.append(
            GpuReading(
                index=int(index) if index.isdigit() else position,
                name=labels.get("name", "GPU"),
                memory_used_bytes=_bytes(values.get(SMI_USED, 0.0)),
                memory_total_bytes=_bytes(values.get(SMI_TOTAL, 0.0)),
                utilization_percent=None if util is None else _percent(util * 100),
            )
        )
    return tuple(sorted(readings, key=lambda r: r.index))


class NodeGpuHolder(Protocol):
    """Where each node's latest sample lives (``LiveState.node_gpus``)."""

    node_gpus: dict[str, GpuSample]


class NodeGpuObserver(Protocol):
    def observe_node(self, node: str, sample: GpuSample) -> None: ...


class RemoteGpus:
    """Reads every node's exporter page each ``interval`` (see the module's theory)."""

    def __init__(
        self,
        nodes: Callable[[], Iterable[Node]],
        interval: float,
        state: NodeGpuHolder,
        alerts: NodeGpuObserver | None,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self._nodes = nodes
        self.interval = interval
        self._state = state
        self._alerts = alerts
        self._loop = loop
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None and any(self._watched()):
            self._task = self._loop.create_task(self._run())

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)

    async def sample_all(self) -> None:
        """One round: every node with a ``gpu_metrics_url``, side by side."""
        watched = list(self._watched())
        samples = await asyncio.gather(*(self._sample(node) for node in watched))
        fresh = {node.name: sample for node, sample in zip(watched, samples, strict=True)}
        self._state.node_gpus = fresh
        if self._alerts is not None:
            for name, sample in fresh.items():
                self._alerts.observe_node(name, sample)

    def _watched(self) -> Iterable[Node]:
        return (node for node in self._nodes() if node.spec.gpu_metrics_url)

    async def _sample(self, node: Node) -> GpuSample:
        url = node.spec.gpu_metrics_url
        assert url is not None
        try:
            text = await fetch_text(
                url,
                timeout=max(0.1, self.interval * 0.8),
                connect_timeout=CONNECT_TIMEOUT_S,
                limit=MAX_PAGE_BYTES,
                ca_file=node.spec.tls.ca_file,
            )
        except ScrapeError as exc:
            return GpuSample.unavailable(f"cannot read the node's GPU metrics: {exc}")
        return sample_from_page(text, time.time())

    async def _run(self) -> None:
        while True:
            try:
                await self.sample_all()
            except Exception:  # a bug here must not end telemetry for the process's life
                log.exception("remote GPU sampling failed")
            await asyncio.sleep(self.interval)
