"""GPU telemetry for remote nodes: exporter pages read strictly, and a gateway that shows
and alerts on each node's GPUs (a real HTTP exporter stand-in on loopback)."""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from browser_helpers import DESKTOP, launched_browser
from harness import CALL_TIMEOUT, NodesHarness, admin_call
from hypothesis import given
from hypothesis import strategies as st
from playwright.sync_api import Browser, expect

from clawproxy.telemetry.promtext import read_series
from clawproxy.telemetry.remotegpu import MAX_PAGE_BYTES, sample_from_page
from clawproxy.telemetry.scrape import ScrapeError, fetch_text

# What dcgm-exporter 3.x serves (trimmed): MiB and percent, one series per gpu label.
DCGM_PAGE = """\
# HELP DCGM_FI_DEV_GPU_UTIL GPU utilization (in %).
# TYPE DCGM_FI_DEV_GPU_UTIL gauge
DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-a",device="nvidia0",modelName="NVIDIA H100 80GB HBM3"} 87
DCGM_FI_DEV_GPU_UTIL{gpu="1",UUID="GPU-b",device="nvidia1",modelName="NVIDIA H100 80GB HBM3"} 3
# HELP DCGM_FI_DEV_FB_FREE Framebuffer memory free (in MiB).
# TYPE DCGM_FI_DEV_FB_FREE gauge
DCGM_FI_DEV_FB_FREE{gpu="0",UUID="GPU-a",device="nvidia0",modelName="NVIDIA H100 80GB HBM3"} 4096
DCGM_FI_DEV_FB_FREE{gpu="1",UUID="GPU-b",device="nvidia1",modelName="NVIDIA H100 80GB HBM3"} 77824
# HELP DCGM_FI_DEV_FB_USED Framebuffer memory used (in MiB).
# TYPE DCGM_FI_DEV_FB_USED gauge
DCGM_FI_DEV_FB_USED{gpu="0",UUID="GPU-a",device="nvidia0",modelName="NVIDIA H100 80GB HBM3"} 77824
DCGM_FI_DEV_FB_USED{gpu="1",UUID="GPU-b",device="nvidia1",modelName="NVIDIA H100 80GB HBM3"} 4096
DCGM_FI_DEV_SM_CLOCK{gpu="0",UUID="GPU-a"} 1980
"""

# What nvidia_gpu_exporter serves: bytes and a ratio, one series per uuid.
SMI_PAGE = """\
# TYPE nvidia_smi_gpu_info gauge
nvidia_smi_gpu_info{uuid="GPU-x",name="NVIDIA GeForce RTX 4090",driver_model_current="",index="0"} 1
# TYPE nvidia_smi_memory_used_bytes gauge
nvidia_smi_memory_used_bytes{uuid="GPU-x"} 2.1474836e+10
nvidia_smi_memory_total_bytes{uuid="GPU-x"} 2.5769803776e+10
nvidia_smi_utilization_gpu_ratio{uuid="GPU-x"} 0.42
"""

GIB = 1024**3


def test_dcgm_exporter_page() -> None:
    sample = sample_from_page(DCGM_PAGE, 1.0)
    assert sample.available
    first, second = sample.gpus
    assert (first.index, first.name) == (0, "NVIDIA H100 80GB HBM3")
    assert first.memory_used_bytes == 76 * GIB and first.memory_total_bytes == 80 * GIB
    assert (first.utilization_percent, second.utilization_percent) == (87, 3)
    assert round(first.memory_percent) == 95


def test_nvidia_gpu_exporter_page() -> None:
    (gpu,) = sample_from_page(SMI_PAGE, 1.0).gpus
    assert (gpu.index, gpu.name, gpu.utilization_percent) == (0, "NVIDIA GeForce RTX 4090", 42)
    assert gpu.memory_total_bytes == 24 * GIB


def test_pages_without_gpus_or_with_a_broken_line_are_unavailable() -> None:
    assert not sample_from_page("up 1\n", 1.0).available
    broken = sample_from_page('DCGM_FI_DEV_FB_USED{gpu="0} 12\n', 1.0)
    assert not broken.available and "line 1" in (broken.reason or "")
    # A line of a series nobody asked for is not even parsed.
    assert read_series('other{x="unterminated 1\nup 2\n', {"up"})[0].value == 2.0


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40))
def test_label_values_with_escapes_read_back(value: str) -> None:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    (sample,) = read_series(f'm{{a="{escaped}",b="x"}} 1.5 1700000000\n', {"m"})
    assert sample.labels == {"a": value, "b": "x"} and sample.value == 1.5


class Exporter:
    """A loopback stand-in for an exporter: serves ``page`` at /metrics."""

    def __init__(self, page: str) -> None:
        self.page = page
        self.server: asyncio.Server | None = None
        self.hits = 0
        # Connections being served: a scrape may be cut by the gateway's stop mid-request,
        # and a connection left open when this loop stops is an unclosed transport.
        self.serving: set[asyncio.StreamWriter] = set()

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/metrics"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.serving.add(writer)
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.hits += 1
            body = self.page.encode()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\n"
                b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)
            )
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the scraper went away mid-request (the gateway stopped)
        finally:
            self.serving.discard(writer)
            writer.close()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
            for writer in list(self.serving):
                writer.close()
            await self.server.wait_closed()
        deadline = asyncio.get_running_loop().time() + CALL_TIMEOUT
        while self.serving and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)  # the handlers see their connection closed


@pytest.fixture
def exporter_url() -> Iterator[str]:
    """An exporter serving ``DCGM_PAGE`` on a loop of its own (its URL goes in the config,
    before the gateway exists)."""
    exporter = Exporter(DCGM_PAGE)
    loop = asyncio.new_event_loop()
    url: list[str] = []
    ready = threading.Event()

    def serve() -> None:
        url.append(loop.run_until_complete(exporter.start()))
        ready.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(CALL_TIMEOUT)
    try:
        yield url[0]
    finally:
        # Closed on its own thread: this one may have Playwright's loop running.
        asyncio.run_coroutine_threadsafe(exporter.close(), loop).result(CALL_TIMEOUT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(CALL_TIMEOUT)
        loop.close()


def test_exporter_page_reaches_stats_metrics_and_alerts(exporter_url: str) -> None:
    settings: dict[str, Any] = {"gpu.interval": "50ms", "alerts.gpu_memory_percent": 90}
    with NodesHarness([{"node": {"gpu_metrics_url": exporter_url}}], settings) as h:
        state = h.gateway.state
        assert h.call(lambda: h.wait_until(lambda: state.alerts["gpu_memory"] >= 1, 5))
        _, stats = admin_call(h, "GET", "/stats")
        gpus = stats["node_gpus"]["n0"]["gpus"]
        assert [g["memory_percent"] for g in gpus] == [95.0, 5.0]
        conn = http.client.HTTPConnection("127.0.0.1", h.gateway.admin_port, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        expected = 'clawproxy_gpu_memory_used_bytes{gpu="0",name="NVIDIA H100 80GB HBM3",node="n0"}'
        assert f"{expected} {76 * GIB}" in text
        # Once per crossing, per GPU of the node: GPU 1 at 5% never fires.
        assert h.read(lambda: state.alerts["gpu_memory"]) == 1


def test_an_unreadable_page_says_why_and_keeps_nothing_stale() -> None:
    node = {"gpu_metrics_url": "http://127.0.0.1:1/metrics"}
    with NodesHarness([{"node": node}], {"gpu.interval": "50ms"}) as h:
        state = h.gateway.state
        assert h.call(lambda: h.wait_until(lambda: "n0" in state.node_gpus, 5))
        reason = h.read(lambda: state.node_gpus["n0"].reason) or ""
        assert "cannot read the node's GPU metrics" in reason


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launched_browser()


def test_internals_page_has_a_gpu_table_per_node(browser: Browser, exporter_url: str) -> None:
    settings: dict[str, Any] = {"gpu.interval": "50ms", "gpu.enabled": True}
    with NodesHarness([{"node": {"gpu_metrics_url": exporter_url}}], settings) as h:
        state = h.gateway.state
        assert h.call(lambda: h.wait_until(lambda: "n0" in state.node_gpus, 5))
        context = browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
        try:
            page = context.new_page()
            page.goto(f"{h.base_url}/ui/internals")
            expect(page.locator('#gpus h3[data-gpu-node="n0"]')).to_have_text("Node n0")
            expect(page.locator("#gpus table").last).to_contain_text("1: NVIDIA H100 80GB HBM3")
        finally:
            context.close()


@pytest.mark.parametrize(
    ("page", "why"),
    [
        ("\x00\xff garbage \n" * 50, "no dcgm-exporter"),
        ('DCGM_FI_DEV_FB_USED{gpu="0"} -5\nDCGM_FI_DEV_FB_FREE{gpu="0"} 10\n', "implausible"),
        # Bytes where MiB are expected: 80 GiB read as MiB is 80 PiB.
        (
            f'DCGM_FI_DEV_FB_USED{{gpu="0"}} {80 * GIB}\nDCGM_FI_DEV_FB_FREE{{gpu="0"}} 0\n',
            "implaus",
        ),
        ('nvidia_smi_memory_used_bytes{uuid="a"} NaN\n', "implausible"),
        ('DCGM_FI_DEV_FB_USED{gpu="0" 12\n', "unreadable"),
    ],
)
def test_hostile_pages_are_refused(page: str, why: str) -> None:
    sample = sample_from_page(page, 1.0)
    assert not sample.available and why in (sample.reason or "")


def test_a_huge_page_is_refused_without_reading_it_all() -> None:
    huge = "# " + "x" * (5 * 1024 * 1024) + "\n"
    exporter = Exporter(huge)

    async def scrape() -> str:
        url = await exporter.start()
        try:
            return await fetch_text(url, timeout=5, connect_timeout=2, limit=MAX_PAGE_BYTES)
        finally:
            await exporter.close()

    # On a thread of its own: Playwright may hold this one's event loop.
    with ThreadPoolExecutor(1) as pool, pytest.raises(ScrapeError, match="larger than"):
        pool.submit(asyncio.run, scrape()).result(CALL_TIMEOUT)


def test_two_nodes_cross_the_76_gib_line_and_the_message_names_each(
    exporter_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings: dict[str, Any] = {"gpu.interval": "50ms", "alerts.gpu_memory_used": "76GiB"}
    nodes = [{"node": {"gpu_metrics_url": exporter_url}}] * 2
    with NodesHarness(nodes, settings) as h:
        state = h.gateway.state
        assert h.call(lambda: h.wait_until(lambda: state.alerts["gpu_memory"] >= 2, 5))
    messages = [r.getMessage() for r in caplog.records if "GPU 0" in r.getMessage()]
    for node in ("n0", "n1"):
        assert any(f"GPU 0 (NVIDIA H100 80GB HBM3) on {node} uses 76.0 GiB" in m for m in messages)
