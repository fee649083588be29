"""GPU telemetry and alerts: the NVML reader against a fake NVML and the real library, the
sampler feeding metrics and /stats, the alert's hysteresis and its webhook."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import h11
import pytest
from harness import CALL_TIMEOUT, Harness

from clawproxy.telemetry.alerts import GpuAlerts, Hysteresis, WebhookError, post_json
from clawproxy.telemetry.gpu import NvmlApi, NvmlReader
from clawproxy.telemetry.gpusample import GpuSample

GIB = 1024**3


class FakeNvmlError(Exception):
    pass


@dataclass
class FakeGpu:
    name: str | bytes
    used: int
    total: int
    utilization: int | None


class FakeNvml:
    """The pynvml functions the reader uses, over a list of fake GPUs."""

    NVMLError = FakeNvmlError

    def __init__(self, *gpus: FakeGpu) -> None:
        self.gpus = list(gpus)
        self.init_error: str | None = None
        self.read_error: str | None = None
        self.inits = 0
        self.shutdowns = 0
        self.threads: set[str] = set()

    def nvmlInit(self) -> None:
        if self.init_error is not None:
            raise FakeNvmlError(self.init_error)
        self.inits += 1

    def nvmlShutdown(self) -> None:
        self.shutdowns += 1

    def nvmlDeviceGetCount(self) -> int:
        self.threads.add(threading.current_thread().name)
        if self.read_error is not None:
            raise FakeNvmlError(self.read_error)
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> Any:
        return self.gpus[index]

    def nvmlDeviceGetName(self, handle: Any) -> str | bytes:
        name: str | bytes = handle.name
        return name

    def nvmlDeviceGetMemoryInfo(self, handle: Any) -> Any:
        return SimpleNamespace(
            used=handle.used, total=handle.total, free=handle.total - handle.used
        )

    def nvmlDeviceGetUtilizationRates(self, handle: Any) -> Any:
        if handle.utilization is None:
            raise FakeNvmlError("Not Supported")
        return SimpleNamespace(gpu=handle.utilization, memory=0)


def reader_for(fake: FakeNvml, **kwargs: Any) -> NvmlReader:
    def load() -> NvmlApi:
        return fake

    return NvmlReader(load, **kwargs)


# --- the reader ------------------------------------------------------------------------------


def test_reader_converts_nvml_values() -> None:
    fake = FakeNvml(
        FakeGpu("NVIDIA H100 80GB HBM3", 40 * GIB, 80 * GIB, 37),
        FakeGpu(b"Tesla T4", 1 * GIB, 16 * GIB, None),
    )
    sample = reader_for(fake).read()
    assert sample.available
    first, second = sample.gpus
    assert (first.index, first.name, first.utilization_percent) == (0, "NVIDIA H100 80GB HBM3", 37)
    assert first.memory_percent == 50.0
    assert (second.name, second.utilization_percent) == ("Tesla T4", None)
    assert second.as_dict()["memory_total_bytes"] == 16 * GIB
    assert fake.inits == 1


def test_reader_without_driver_retries_only_after_a_while() -> None:
    fake = FakeNvml(FakeGpu("g", 1, 2, 3))
    fake.init_error = "Driver Not Loaded"
    now = [0.0]
    reader = reader_for(fake, retry_s=60.0, clock=lambda: now[0])
    sample = reader.read()
    assert sample == GpuSample.unavailable("no NVIDIA driver: Driver Not Loaded")
    fake.init_error = None
    now[0] = 59.0
    assert not reader.read().available  # too soon to try again
    assert fake.inits == 0
    now[0] = 60.0
    assert reader.read().available
    assert fake.inits == 1


def test_reader_recovers_from_a_lost_gpu() -> None:
    fake = FakeNvml(FakeGpu("g", 1, 2, 3))
    now = [0.0]
    reader = reader_for(fake, retry_s=5.0, clock=lambda: now[0])
    assert reader.read().available
    fake.read_error = "GPU is lost"
    sample = reader.read()
    assert (sample.available, sample.reason) == (False, "NVML read failed: GPU is lost")
    assert fake.shutdowns == 1
    fake.read_error = None
    now[0] = 5.0
    assert reader.read().available
    assert fake.inits == 2


def test_reader_with_no_gpus_and_without_the_library() -> None:
    assert reader_for(FakeNvml()).read().reason == "NVML reports no GPUs"

    def missing() -> NvmlApi:
        raise ImportError("No module named 'pynvml'")

    assert NvmlReader(missing).read().reason == "nvidia-ml-py is not installed"


def test_real_nvml() -> None:
    """The real library on this machine: no driver is a reason, a driver gives readings."""
    reader = NvmlReader()
    try:
        sample = reader.read()
    finally:
        reader.close()
    if sample.available:
        assert sample.gpus
        assert all(g.memory_total_bytes > 0 and g.memory_used_bytes >= 0 for g in sample.gpus)
    else:
        assert sample.reason is not None
        assert sample.reason.startswith(("no NVIDIA driver", "NVML reports no GPUs"))
        assert sample.as_dict() == {"available": False, "reason": sample.reason}


# --- hysteresis ------------------------------------------------------------------------------


def test_hysteresis_fires_once_and_rearms_below_the_margin() -> None:
    alarm = Hysteresis(95.0, 5.0)
    seen = [alarm.update(0, v) for v in (50, 95, 99, 94, 91, 95.5, 90.1, 89.9, 96)]
    assert seen == [None, "fire", None, None, None, None, None, "rearm", "fire"]
    # Each GPU has its own state.
    assert alarm.update(1, 96) == "fire"
    assert alarm.update(0, 99) is None


# --- the webhook client ----------------------------------------------------------------------


@dataclass
class Receiver:
    """A tiny webhook receiver: records each POST body, answers ``status``."""

    status: int = 204
    silent: bool = False
    bodies: list[dict[str, Any]] = field(default_factory=list)
    heads: list[bytes] = field(default_factory=list)
    server: asyncio.Server | None = None
    got: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self.server = await asyncio.start_server(self.handle, "127.0.0.1", 0)

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/hooks/gpu?k=1"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            self.heads.append(head)
            self.bodies.append(json.loads(await reader.readexactly(length)))
            self.got.set()
            if self.silent:
                await reader.read()  # until the client gives up
            else:
                writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % self.status)
                await writer.drain()
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


def test_post_json_sends_one_request() -> None:
    async def main() -> None:
        receiver = Receiver(status=202)
        await receiver.start()
        url = receiver.url
        try:
            assert await post_json(receiver.url, b'{"a": 1}', 5.0) == 202
            head = receiver.heads[0]
            assert head.startswith(b"POST /hooks/gpu?k=1 HTTP/1.1\r\n")
            assert b"content-type: application/json" in head.lower()
            assert receiver.bodies == [{"a": 1}]
            receiver.silent = True
            with pytest.raises(TimeoutError):
                await post_json(receiver.url, b"{}", 0.05)
        finally:
            await receiver.close()
        with pytest.raises(OSError):
            await post_json(url, b"{}", 5.0)  # nobody listens there any more

    asyncio.run(main())


@pytest.mark.parametrize(
    ("answer", "error"),
    [(b"", WebhookError), (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", h11.RemoteProtocolError)],
)
def test_post_json_to_a_non_http_peer(answer: bytes, error: type[Exception]) -> None:
    async def main() -> None:
        async def peer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n{}")
            writer.write(answer)
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(peer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            with pytest.raises(error):
                await post_json(f"http://127.0.0.1:{port}/", b"{}", 5.0)
        finally:
            server.close()
            await server.wait_closed()

    asyncio.run(main())


class LoopThread:
    """An event loop on a thread of its own, for a receiver that must exist before the
    gateway's config names its URL."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> LoopThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(CALL_TIMEOUT)
        self.loop.close()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(CALL_TIMEOUT)


@pytest.fixture
def receiver_gw(loop_kind: str) -> Iterator[tuple[Harness, Receiver, FakeNvml]]:
    with LoopThread() as side:
        receiver = Receiver()
        side.run(receiver.start())
        settings = {
            "gpu.enabled": False,  # no timer: the tests take each sample themselves
            "alerts.gpu_memory_percent": 95,
            "alerts.hysteresis_percent": 5,
            "alerts.webhook_url": receiver.url,
            "alerts.webhook_retry_delay": "10ms",  # the 500 test retries without waiting
        }
        try:
            with Harness(settings, loop_kind=loop_kind) as h:
                fake = FakeNvml(
                    FakeGpu("H100", 40 * GIB, 80 * GIB, 12), FakeGpu("H100", 0, 80 * GIB, 0)
                )
                h.gateway.gpu.reader = reader_for(fake)
                yield h, receiver, fake
        finally:
            side.run(receiver.close())


def alerts_of(h: Harness) -> GpuAlerts:
    alerts = h.gateway.gpu.alerts
    assert alerts is not None
    return alerts


def admin_get(h: Harness, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", h.gateway.admin_port, timeout=CALL_TIMEOUT)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    assert resp.status == 200
    return body


def test_samples_flow_to_metrics_and_stats(receiver_gw: tuple[Harness, Receiver, FakeNvml]) -> None:
    h, _, fake = receiver_gw
    sample = h.call(h.gateway.gpu.sample_once)
    assert sample.available
    # NVML ran on the sampler's own thread, never on the event loop's.
    assert fake.threads == {"clawproxy-nvml_0"}
    stats = json.loads(admin_get(h, "/stats"))["gpu"]
    assert stats["available"] is True
    assert stats["gpus"][0] == {
        "index": 0,
        "name": "H100",
        "memory_used_bytes": 40 * GIB,
        "memory_total_bytes": 80 * GIB,
        "memory_percent": 50.0,
        "utilization_percent": 12,
    }
    text = admin_get(h, "/metrics").decode()
    assert f'clawproxy_gpu_memory_used_bytes{{gpu="0",name="H100"}} {40 * GIB}' in text
    assert f'clawproxy_gpu_memory_total_bytes{{gpu="1",name="H100"}} {80 * GIB}' in text
    assert 'clawproxy_gpu_utilization_ratio{gpu="0",name="H100"} 0.12' in text
    assert "clawproxy_gpu_available 1" in text


def test_alert_fires_once_and_rearms(receiver_gw: tuple[Harness, Receiver, FakeNvml]) -> None:
    h, receiver, fake = receiver_gw
    gpu = fake.gpus[0]

    def sample_at(percent: float) -> None:
        gpu.used = int(gpu.total * percent / 100)
        h.call(h.gateway.gpu.sample_once)
        h.call(alerts_of(h).wait_idle)

    for percent in (50, 96, 99, 97, 92, 95):  # over the line, hovering: one alert
        sample_at(percent)
    assert len(receiver.bodies) == 1
    alert = receiver.bodies[0]
    assert (alert["alert"], alert["gpu"], alert["name"]) == ("gpu_memory", 0, "H100")
    assert alert["memory_percent"] == 96.0
    assert alert["threshold_percent"] == 95
    assert alert["model"] == "qwen3:32b"
    for percent in (89, 96):  # below threshold - hysteresis: resolved, re-armed, fires again
        sample_at(percent)
    assert [(b["alert"], b["memory_percent"]) for b in receiver.bodies] == [
        ("gpu_memory", 96.0),
        ("gpu_memory_resolved", 89.0),
        ("gpu_memory", 96.0),
    ]
    counts = h.read(lambda: dict(h.gateway.state.alerts))
    assert counts == {"gpu_memory": 2, "gpu_memory_resolved": 1, "webhook_sent": 3}
    assert 'clawproxy_alerts_total{event="webhook_sent"} 3' in admin_get(h, "/metrics").decode()


def test_failed_webhook_is_counted_not_fatal(
    receiver_gw: tuple[Harness, Receiver, FakeNvml],
) -> None:
    h, receiver, fake = receiver_gw
    receiver.status = 500
    fake.gpus[1].used = fake.gpus[1].total  # GPU 1 full
    h.call(h.gateway.gpu.sample_once)
    h.call(alerts_of(h).wait_idle)
    assert receiver.bodies[0]["gpu"] == 1
    assert h.read(lambda: dict(h.gateway.state.alerts)) == {"gpu_memory": 1, "webhook_failed": 1}


def test_periodic_sampling_and_no_driver_path(loop_kind: str) -> None:
    """Sampling on, real NVML first (no driver here: a reason), then a fake, every 20 ms."""
    with Harness({"gpu.interval": "20ms"}, loop_kind=loop_kind) as h:
        sampler = h.gateway.gpu
        assert h.call(lambda: h.wait_until(lambda: sampler.samples >= 1))
        first = h.read(lambda: h.gateway.state.gpu)
        if not first.available:
            assert json.loads(admin_get(h, "/stats"))["gpu"]["reason"] == first.reason
            assert "clawproxy_gpu_available 0" in admin_get(h, "/metrics").decode()
        fake = FakeNvml(FakeGpu("A", 1, 4, 50))
        sampler.reader = reader_for(fake)
        assert h.call(lambda: h.wait_until(lambda: h.gateway.state.gpu.available))
        seen = h.read(lambda: sampler.samples)
        assert h.call(lambda: h.wait_until(lambda: sampler.samples >= seen + 2))
    # Stopping the gateway shut NVML down on its thread.
    assert fake.shutdowns == 1
