"""GPU telemetry: NVML sampled off the event loop, one immutable sample at a time.

Theory of operation
-------------------
``NvmlReader.read()`` is blocking code: it initialises NVML on first use, then reads
memory used/total and utilisation of every GPU into a ``GpuSample``. ``GpuSampler`` runs
it every ``gpu.interval`` on a single-thread executor, because NVML calls block (a busy or
wedged driver can take seconds) and the event loop must never wait for one; the one thread
also means NVML handles are never used from two threads at once. Each sample replaces
``LiveState.gpu`` whole, so readers (metrics, /stats) never see half an update, and is
handed to the alerts.

No driver, no library, no GPU: ``read()`` returns ``GpuSample.unavailable(reason)`` and
retries initialisation only every ``NVML_RETRY_S`` seconds, so a machine without NVIDIA
hardware pays nothing, and everything else works as usual.

The NVML API is injected (``NvmlApi``: the few ``pynvml`` functions used), so tests drive
the real reader with a fake; ``pynvml`` itself is imported lazily, on the sampler thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol, cast

from clawproxy.config import GpuConfig
from clawproxy.tasks import stop_task
from clawproxy.telemetry.gpusample import GpuReading, GpuSample

log = logging.getLogger("clawproxy.gpu")

# After NVML failed to start, try again this often (a driver may finish loading after boot).
NVML_RETRY_S = 60.0


class NvmlApi(Protocol):
    """The part of ``pynvml`` the reader uses (the module satisfies it; tests fake it)."""

    @property
    def NVMLError(self) -> type[Exception]: ...  # pynvml spells it so

    def nvmlInit(self) -> None: ...
    def nvmlShutdown(self) -> None: ...
    def nvmlDeviceGetCount(self) -> int: ...
    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any: ...
    def nvmlDeviceGetName(self, handle: Any) -> str | bytes: ...
    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any: ...
    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any: ...


# Present wherever an NVIDIA kernel driver is loaded (containers with a GPU get them too).
DRIVER_MARKERS = ("/dev/nvidiactl", "/proc/driver/nvidia/version")


class NoDriver(Exception):
    """No NVIDIA driver on this host: there is nothing for NVML to talk to."""


def load_pynvml() -> NvmlApi:
    """Import ``pynvml`` (the ``nvidia-ml-py`` package) only when sampling starts, and only
    where a driver exists: on a GPU-less appliance the import alone costs ~3 MiB of RSS."""
    if not any(os.path.exists(marker) for marker in DRIVER_MARKERS):
        raise NoDriver(f"no NVIDIA driver ({' and '.join(DRIVER_MARKERS)} are absent)")
    return cast(NvmlApi, importlib.import_module("pynvml"))


class NvmlReader:
    """Blocking NVML access; call only from the sampler's thread."""

    def __init__(
        self,
        load_api: Callable[[], NvmlApi] = load_pynvml,
        *,
        retry_s: float = NVML_RETRY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load_api = load_api
        self._retry_s = retry_s
        self._clock = clock
        self._api: NvmlApi | None = None
        self._initialized = False
        self._failed_at: float | None = None
        self._failure = GpuSample.unavailable("not sampled yet")

    def read(self) -> GpuSample:
        if not self._initialized:
            failed_at = self._failed_at
            if failed_at is not None and self._clock() - failed_at < self._retry_s:
                return self._failure
            failure = self._init()
            if failure is not None:
                return failure
        api = self._api
        assert api is not None
        try:
            gpus = tuple(self._read_gpu(api, i) for i in range(api.nvmlDeviceGetCount()))
        except api.NVMLError as exc:
            # A GPU fell off the bus or the driver was reloaded: start over next time.
            self.close()
            return self._fail(f"NVML read failed: {exc}")
        if not gpus:
            return GpuSample.unavailable("NVML reports no GPUs")
        return GpuSample(available=True, gpus=gpus, sampled_at=round(time.time(), 3))

    def _init(self) -> GpuSample | None:
        try:
            api = self._api or self._load_api()
        except ImportError:
            return self._fail("nvidia-ml-py is not installed")
        except NoDriver as exc:
            return self._fail(str(exc))
        self._api = api
        try:
            api.nvmlInit()
        except (api.NVMLError, OSError) as exc:
            return self._fail(f"no NVIDIA driver: {exc}")
        self._initialized = True
        self._failed_at = None
        return None

    def _fail(self, reason: str) -> GpuSample:
        self._failed_at = self._clock()
        self._failure = GpuSample.unavailable(reason)
        return self._failure

    @staticmethod
    def _read_gpu(api: NvmlApi, index: int) -> GpuReading:
        handle = api.nvmlDeviceGetHandleByIndex(index)
        name = api.nvmlDeviceGetName(handle)
        if isinstance(name, bytes):  # older nvidia-ml-py releases return bytes
            name = name.decode("utf-8", "replace")
        memory = api.nvmlDeviceGetMemoryInfo(handle)
        try:
            utilization: int | None = int(api.nvmlDeviceGetUtilizationRates(handle).gpu)
        except api.NVMLError:
            utilization = None
        return GpuReading(index, str(name), int(memory.used), int(memory.total), utilization)

    def close(self) -> None:
        if self._initialized and self._api is not None:
            self._initialized = False
            with contextlib.suppress(self._api.NVMLError):
                self._api.nvmlShutdown()


class SampleHolder(Protocol):
    """Where the latest sample lives for readers (``LiveState``)."""

    gpu: GpuSample


class SampleObserver(Protocol):
    """Who is told of every sample (``GpuAlerts``), and closed with the sampler."""

    def observe(self, sample: GpuSample) -> None: ...

    async def close(self) -> None: ...


class GpuSampler:
    """Runs ``reader.read()`` every ``interval`` seconds on its own thread; see module doc."""

    def __init__(
        self,
        config: GpuConfig,
        state: SampleHolder,
        loop: asyncio.AbstractEventLoop,
        alerts: SampleObserver | None = None,
        reader: NvmlReader | None = None,
    ) -> None:
        self.config = config
        self.state = state
        self.loop = loop
        self.alerts = alerts
        # Replaceable before or while running: each tick reads whichever reader is here.
        self.reader = reader or NvmlReader()
        self.samples = 0
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if not self.config.enabled:
            self.state.gpu = GpuSample.unavailable("disabled in the configuration (gpu.enabled)")
            return
        if self._task is None:
            self._task = self.loop.create_task(self._run())

    async def sample_once(self) -> GpuSample:
        """Take one sample now, publish it to the state and the alerts, and return it."""
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="clawproxy-nvml")
        sample = await self.loop.run_in_executor(self._executor, self.reader.read)
        previous, self.state.gpu = self.state.gpu, sample
        self.samples += 1
        if sample.available != previous.available or (
            not sample.available and sample.reason != previous.reason
        ):
            if sample.available:
                log.info("GPU telemetry: %d GPU(s) found", len(sample.gpus))
            else:
                log.info("GPU telemetry unavailable: %s", sample.reason)
        if self.alerts is not None:
            self.alerts.observe(sample)
        return sample

    async def _run(self) -> None:
        while True:
            try:
                await self.sample_once()
            except Exception:  # a bug here must not end telemetry for the process's life
                log.exception("GPU sampling failed")
            await asyncio.sleep(self.config.interval)

    async def stop(self) -> None:
        task, self._task = self._task, None
        await stop_task(task)
        executor, self._executor = self._executor, None
        if executor is not None:
            # Shut NVML down on its own thread, after any read still running there.
            await self.loop.run_in_executor(executor, self.reader.close)
            executor.shutdown(wait=False)
        if self.alerts is not None:
            await self.alerts.close()
