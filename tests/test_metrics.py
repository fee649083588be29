"""Prometheus exposition and the /stats windows: units without a loop, and end to end with
the exposition parsed by prometheus_client's own parser."""

from __future__ import annotations

import http.client
import json
import random
from collections.abc import Iterator

import pytest
from harness import CALL_TIMEOUT, Harness, post_json, request
from prometheus_client.parser import text_string_to_metric_families

from clawproxy.config import Config
from clawproxy.http.request import Request
from clawproxy.simulator import Fault, Reply
from clawproxy.telemetry.gpusample import GpuReading, GpuSample
from clawproxy.telemetry.histogram import Histogram
from clawproxy.telemetry.metrics import escape_label, render
from clawproxy.telemetry.state import (
    MAX_MODEL_LABELS,
    WINDOW_SECONDS,
    LiveState,
    RateWindow,
    sketch_index,
    sketch_percentile,
)

CHAT = {"messages": [{"role": "user", "content": "hi"}]}
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> tuple[dict[str, str], Samples]:
    """Family types and every sample, keyed by (sample name, labels)."""
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return types, samples


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    return samples[(metric, frozenset(labels.items()))]


def fake_request(
    model: str = "m", status: int = 200, tokens: int = 0, ttft: float | None = None
) -> Request:
    req = Request(b"POST", b"/v1/chat/completions", [], b"", "127.0.0.1", b"1.1", started=100.0)
    req.status, req.model, req.tokens = status, model, tokens
    req.first_token_at = None if ttft is None else 100.0 + ttft
    return req


# --- units -----------------------------------------------------------------------------------


def test_histogram_buckets_are_le_and_cumulative() -> None:
    hist = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):
        hist.observe(v)
    assert hist.cumulative() == [("0.1", 2), ("1.0", 4), ("+Inf", 5)]
    assert hist.count == 5
    assert hist.sum == pytest.approx(8.65)


def test_label_values_are_escaped_and_parse_back() -> None:
    state = LiveState(Config(), 0.0)
    nasty = 'a"b\\c\nd'
    state.record_request(
        fake_request(model=nasty, tokens=2, ttft=0.2), "/v1/chat/completions", 101.0
    )
    text = render(state, 5.0, draining=False, version="1")
    assert escape_label(nasty).encode() in text
    _, samples = parse(text.decode())
    assert value(samples, "clawproxy_tokens_streamed_total", model=nasty) == 2


def test_model_labels_are_capped() -> None:
    state = LiveState(Config(), 0.0)
    for i in range(MAX_MODEL_LABELS + 5):
        state.record_request(fake_request(model=f"m{i}"), "/v1/chat/completions", 101.0)
    models = {model for (_, model, _) in state.requests}
    assert len(models) == MAX_MODEL_LABELS + 1
    assert state.requests[("/v1/chat/completions", "other", 200)] == 5


def test_render_of_an_idle_gateway_parses() -> None:
    state = LiveState(Config(), 0.0)
    types, samples = parse(render(state, 12.5, draining=True, version="9").decode())
    assert types["clawproxy_requests"] == "counter"
    assert types["clawproxy_request_duration_seconds"] == "histogram"
    assert types["clawproxy_active_requests"] == "gauge"
    assert value(samples, "clawproxy_uptime_seconds") == 12.5
    assert value(samples, "clawproxy_draining") == 1
    assert value(samples, "clawproxy_gpu_available") == 0
    assert value(samples, "clawproxy_info", version="9", default_model="qwen3:32b") == 1


def test_gpu_gauges() -> None:
    state = LiveState(Config(), 0.0)
    state.gpu = GpuSample(
        available=True,
        gpus=(GpuReading(0, "H100", 30, 100, 45), GpuReading(1, "H100", 1, 100, None)),
        sampled_at=1.0,
    )
    _, samples = parse(render(state, 1.0, draining=False, version="1").decode())
    assert value(samples, "clawproxy_gpu_memory_used_bytes", gpu="0", name="H100") == 30
    assert value(samples, "clawproxy_gpu_memory_total_bytes", gpu="1", name="H100") == 100
    assert value(samples, "clawproxy_gpu_utilization_ratio", gpu="0", name="H100") == 0.45
    # Utilisation not reported by a GPU: no sample rather than a made-up 0.
    assert (
        "clawproxy_gpu_utilization_ratio",
        frozenset({("gpu", "1"), ("name", "H100")}),
    ) not in samples


def test_sketch_percentiles_are_close() -> None:
    counts = [0] * 62
    values = [0.010 * (i + 1) for i in range(100)]  # 10 ms .. 1 s, uniform
    for v in values:
        counts[sketch_index(v)] += 1
    p50 = sketch_percentile(counts, 100, 50)
    p99 = sketch_percentile(counts, 100, 99)
    assert p50 is not None and p99 is not None
    assert 0.5 * 0.88 <= p50 <= 0.5 * 1.12
    assert 0.99 * 0.88 <= p99 <= 0.99 * 1.12
    assert sketch_percentile(counts, 0, 50) is None
    assert sketch_index(0.0) == 0
    assert sketch_index(1e9) == 61


def test_rate_window_slides_and_reuses_slots() -> None:
    window = RateWindow(size=10)
    for second in range(5):
        window.add(1000.0 + second, 0.1, 0.05, 3, error=second == 4)
    summary = window.summary(1004.5, 10, span=100.0)
    assert (summary["requests"], summary["errors"], summary["tokens"]) == (5, 1, 15)
    assert summary["requests_per_second"] == 0.5
    assert window.per_second(1004.0, 6) == [0, 1, 1, 1, 1, 1]
    # At 1012 the window is 1003..1012: 1000..1002 fell out, and 1012 reused 1002's slot.
    window.add(1012.0, 2.0, None, 0, error=False)
    summary = window.summary(1012.0, 10, span=100.0)
    assert (summary["requests"], summary["errors"], summary["tokens"]) == (3, 1, 6)
    assert window.per_second(1012.0, 10) == [1, 1] + [0] * 7 + [1]
    assert summary["ttft_ms"]["p50"] is not None
    # A process younger than the window divides by its age, not the window.
    assert window.summary(1012.0, 10, span=2.0)["requests_per_second"] == 1.5


# --- end to end ------------------------------------------------------------------------------


@pytest.fixture
def gw(loop_kind: str) -> Iterator[Harness]:
    with Harness({"gpu.enabled": False, "gateway.queue_size": 0, "gateway.max_concurrent": 1},
                 loop_kind=loop_kind) as harness:  # fmt: skip
        yield harness
        assert harness.settled()


def scrape(h: Harness) -> tuple[dict[str, str], Samples, dict[str, str]]:
    conn = http.client.HTTPConnection("127.0.0.1", h.gateway.admin_port, timeout=CALL_TIMEOUT)
    conn.request("GET", "/metrics")
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    assert resp.status == 200
    types, samples = parse(text)
    return types, samples, {k.lower(): v for k, v in resp.getheaders()}


def test_metrics_match_the_traffic(gw: Harness) -> None:
    gw.sim.next_reply(Reply(tokens=["a", "b", "c"]), Reply(tokens=["d", "e"]))
    assert post_json(gw, "/v1/chat/completions", {**CHAT, "stream": True})[0] == 200
    assert post_json(gw, "/v1/chat/completions", CHAT)[0] == 200
    assert post_json(gw, "/v1/chat/completions", {**CHAT, "model": "nope:1b"})[0] == 404
    assert post_json(gw, "/v1/chat/completions", b"{")[0] == 400
    assert request(gw, "GET", "/v1/models")[0] == 200
    assert request(gw, "GET", "/nowhere/1")[0] == 404
    assert request(gw, "GET", "/nowhere/2")[0] == 404
    # Ollama fails mid-stream: a 200 that ends in an SSE error and a cut stream.
    gw.sim.next_reply(Reply(tokens=["p", "q"], fault=Fault(error_line_after=1)))
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=CALL_TIMEOUT)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({**CHAT, "stream": True}))
    resp = conn.getresponse()
    assert resp.status == 200
    with pytest.raises(http.client.IncompleteRead) as cut:
        resp.read()
    assert b"[DONE]" not in cut.value.partial
    conn.close()
    # Ollama fails before the stream: a 502, counted as an upstream error.
    gw.sim.next_reply(Reply(tokens=["z"], fault=Fault(status=500)))
    assert post_json(gw, "/v1/chat/completions", CHAT)[0] == 502
    # A full gateway: hold the only slot with a slow stream, and get a 503.
    gw.sim.next_reply(Reply(tokens=["x"]))
    gw.sim.first_token_delay = 0.3
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=CALL_TIMEOUT)
    conn.request("POST", "/v1/chat/completions", body=json.dumps({**CHAT, "stream": True}))
    assert gw.call(lambda: gw.wait_until(lambda: gw.gateway.state.admission.active == 1))
    assert post_json(gw, "/v1/chat/completions", CHAT)[0] == 503
    conn.getresponse().read()
    conn.close()
    gw.sim.first_token_delay = 0.0
    assert gw.settled()

    types, samples, headers = scrape(gw)
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    chat, model = "/v1/chat/completions", "qwen3:32b"
    assert value(samples, "clawproxy_requests_total", endpoint=chat, model=model, status="200") == 4
    # A name that failed the model check never becomes a label (it could be anything).
    assert value(samples, "clawproxy_requests_total", endpoint=chat, model="-", status="404") == 1
    assert value(samples, "clawproxy_requests_total", endpoint=chat, model="-", status="400") == 1
    assert value(samples, "clawproxy_requests_total", endpoint=chat, model=model, status="503") == 1
    assert (
        value(samples, "clawproxy_requests_total", endpoint="/v1/models", model="-", status="200")
        == 1
    )
    assert (
        value(samples, "clawproxy_requests_total", endpoint="other", model="-", status="404") == 2
    )
    # 3 + 2 + 1 + 1 content tokens went out for qwen3.
    assert value(samples, "clawproxy_tokens_streamed_total", model=model) == 7
    assert value(samples, "clawproxy_time_to_first_token_seconds_count", model=model) == 4
    fast = value(samples, "clawproxy_time_to_first_token_seconds_bucket", model=model, le="0.25")
    assert fast == 3  # the slow one waited 0.3 s for its first token
    assert (
        value(samples, "clawproxy_request_duration_seconds_count", endpoint=chat, model=model) == 6
    )
    inf = value(
        samples, "clawproxy_request_duration_seconds_bucket", endpoint=chat, model=model, le="+Inf"
    )
    assert inf == 6
    assert value(samples, "clawproxy_rejections_total", reason="queue_full") == 1
    assert value(samples, "clawproxy_requests_total", endpoint=chat, model=model, status="502") == 1
    # The mid-stream error line and the 500 before the stream.
    assert value(samples, "clawproxy_upstream_errors_total", kind="upstream_error") == 2
    assert value(samples, "clawproxy_active_requests") == 0
    assert value(samples, "clawproxy_queued_requests") == 0
    assert value(samples, "clawproxy_max_concurrent") == 1
    assert types["clawproxy_gpu_memory_used_bytes"] == "gauge"


def test_unknown_model_names_cannot_use_up_the_model_labels(gw: Harness) -> None:
    """40 requests naming models that do not exist (each a 404) used to fill the 32 label
    slots, and real models were then counted as "other" until a restart."""
    chat = "/v1/chat/completions"
    for i in range(MAX_MODEL_LABELS + 8):
        assert post_json(gw, chat, {**CHAT, "model": f"nope-{i}:1b"})[0] == 404
    # Spellings of one installed model (Ollama matches them all) share one label.
    for name in ("qwen3:32b", "QWEN3:32B", "Qwen3:32b", "llama3.2", "LLAMA3.2:latest"):
        assert post_json(gw, chat, {**CHAT, "model": name})[0] == 200
    _, samples, _ = scrape(gw)
    models = {dict(labels).get("model") for name, labels in samples if name.endswith("_total")}
    assert "other" not in models
    assert not [m for m in models if m and m.startswith("nope")]
    assert value(samples, "clawproxy_requests_total", endpoint=chat, model="-", status="404") == 40
    assert (
        value(samples, "clawproxy_requests_total", endpoint=chat, model="qwen3:32b", status="200")
        == 3
    )
    pulled = value(
        samples, "clawproxy_requests_total", endpoint=chat, model="llama3.2:latest", status="200"
    )
    assert pulled == 2
    # The UI's recent-requests table shows only checked names too.
    recent = gw.read(lambda: gw.gateway.state.stats(gw.loop.time())["recent"])
    assert {r["model"] for r in recent[:5]} == {"qwen3:32b", "llama3.2:latest"}
    assert {r["model"] for r in recent[5:]} == {"-"}


def test_upstream_failures_count_whichever_step_hit_them() -> None:
    """Ollama refusing: the model check (chat), /v1/models and the UI's model list each fail
    with a 502, and each failure is counted, in /metrics and in /stats alike."""
    with Harness({"gpu.enabled": False}, start_simulator=False) as h:
        for stream in (False, True, False):
            body = {**CHAT, "stream": stream}
            assert post_json(h, "/v1/chat/completions", body)[0] == 502
        assert request(h, "GET", "/v1/models")[0] == 502
        assert request(h, "GET", "/ui/api/models")[0] == 502
        _, samples, _ = scrape(h)
        assert value(samples, "clawproxy_upstream_errors_total", kind="upstream_unavailable") == 5
        conn = http.client.HTTPConnection("127.0.0.1", h.gateway.admin_port, timeout=CALL_TIMEOUT)
        try:
            conn.request("GET", "/stats")
            stats = json.loads(conn.getresponse().read())
        finally:
            conn.close()
        assert stats["upstream_errors"] == {"upstream_unavailable": 5}
        assert h.settled()


def chat_request(duration: float, at: float, ttft: float | None = None) -> Request:
    """A finished chat request that ended at ``at`` after ``duration`` seconds."""
    req = Request(b"POST", b"/v1/chat/completions", [], b"", "127.0.0.1", b"1.1", at - duration)
    req.status, req.model, req.tokens = 200, "m", 1
    req.first_token_at = None if ttft is None else at - duration + ttft
    return req


def other_request(path: bytes, at: float) -> Request:
    req = Request(b"GET", path, [], b"", "127.0.0.1", b"1.1", started=at - 0.0003)
    req.status = 200
    return req


def near(ms: float) -> object:
    """A sketch's estimate of a lone value: within its bucket, a factor 10 ** 0.1 wide."""
    return pytest.approx(ms, rel=0.26)


def test_latency_percentiles_are_of_chat_requests_only() -> None:
    state = LiveState(Config(), 0.0)
    now = 1000.0
    state.record_request(chat_request(2.0, now - 1, ttft=0.2), "/v1/chat/completions", now - 1)
    for i in range(20):
        path = b"/health" if i % 2 else b"/v1/models"
        state.record_request(other_request(path, now), path.decode(), now)
    minute = state.stats(now)["windows"][0]
    # Every counted request is a request per second; only chat requests are latency.
    assert minute["requests"] == 21
    assert minute["duration_ms"]["p50"] == near(2000)
    assert minute["duration_ms"]["p99"] == near(2000)
    assert minute["ttft_ms"]["p50"] == near(200)
    series = state.stats(now)["latency_series"]
    assert [p for p in series["duration_ms"]["p50"] if p is not None] == [near(2000)]


def test_report_windows_equal_their_summaries() -> None:
    """report() merges its windows from 5 s steps; summary() from the seconds: the same."""
    window = RateWindow()
    rng = random.Random(7)
    for _ in range(2000):
        at = 10_000 + rng.uniform(0, 400)
        ttft = rng.choice([None, rng.uniform(0.001, 5)])
        window.add(at, rng.uniform(0.0005, 60), ttft, rng.randrange(50), rng.random() < 0.1,
                   timed=rng.random() < 0.7)  # fmt: skip
    for now in (10_100.2, 10_299.9, 10_400.0, 10_650.5):
        windows, _ = window.report(now, 250.0, (60, 300))
        assert windows == [window.summary(now, 60, 250.0), window.summary(now, 300, 250.0)]


def test_latency_series_covers_the_whole_window() -> None:
    """The chart's history comes from the gateway's window: full from the first snapshot."""
    state = LiveState(Config(), 0.0)
    now = 5000.4
    for ago, duration in ((280, 4.0), (200, 2.0), (100, 1.0), (2, 0.5)):
        at = now - ago
        state.record_request(
            chat_request(duration, at, ttft=duration / 10), "/v1/chat/completions", at
        )
    series = state.stats(now)["latency_series"]
    step = series["step_seconds"]
    points = len(series["duration_ms"]["p50"])
    assert step * points == WINDOW_SECONDS
    assert {len(series[k][p]) for k in ("ttft_ms", "duration_ms") for p in ("p50", "p99")} == {
        points
    }
    filled = {i: v for i, v in enumerate(series["duration_ms"]["p50"]) if v is not None}
    # Oldest first; the last point holds the current second.
    assert [points - 1 - i for i in filled] == [280 // step, 200 // step, 100 // step, 0]
    assert list(filled.values()) == [near(ms) for ms in (4000, 2000, 1000, 500)]
    ttft = [v for v in series["ttft_ms"]["p90"] if v is not None]
    assert ttft == [near(ms) for ms in (400, 200, 100, 50)]
    # Older than the window: gone.
    later = state.stats(now + 30)["latency_series"]
    assert len([v for v in later["duration_ms"]["p50"] if v is not None]) == 3
