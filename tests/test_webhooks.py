"""Alerts delivered to webhooks over real TLS: a loopback HTTPS receiver signed by a test CA
given to the gateway's config, every format and signature, retries, the rate limit,
resolved messages, the events and thresholds, and the gateway's wiring."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest
from alert_schemas import (
    check_dingtalk,
    check_feishu,
    check_generic,
    check_slack,
    check_wecom,
    verify_dingtalk_query,
)
from harness import Harness, NodesHarness, Runner
from tls_certs import TlsCerts, server_context, session_certs

from clawproxy.config import ConfigError, config_from_mapping
from clawproxy.config.schema import Config
from clawproxy.nodes.node import Node
from clawproxy.telemetry.alerts import Cooldown, GpuAlerts, RateWatch
from clawproxy.telemetry.gpusample import GpuReading, GpuSample
from clawproxy.telemetry.state import LiveState
from clawproxy.telemetry.webhook import Delivery, parse_webhook_url, post_json

GIB = 1024**3
# Bounded waits: a delivery on loopback takes milliseconds.
WAIT_S = 10.0
SECRET = "SECtest-secret-0123456789"


@dataclass
class Received:
    target: str
    head: bytes
    raw: bytes

    @property
    def body(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.raw)
        return parsed

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


@dataclass
class TlsReceiver:
    """An HTTPS webhook receiver on loopback: records each POST; answers from ``statuses``
    (then 204)."""

    certs: TlsCerts
    statuses: list[int] = field(default_factory=list)
    got: list[Received] = field(default_factory=list)
    server: asyncio.Server | None = None
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def start(self) -> None:
        self.server = await asyncio.start_server(
            self.handle, "127.0.0.1", 0, ssl=server_context(self.certs)
        )

    def url(self, path: str = "/hook") -> str:
        assert self.server is not None
        return f"https://127.0.0.1:{self.server.sockets[0].getsockname()[1]}{path}"

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            raw = await reader.readexactly(length)
            target = head.split(b" ", 2)[1].decode()
            self.got.append(Received(target, head, raw))
            self.arrived.set()
            status = self.statuses.pop(0) if self.statuses else 204
            writer.write(b"HTTP/1.1 %d X\r\nContent-Length: 0\r\n\r\n" % status)
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass  # a client that gave up (the wrong-CA test)
        finally:
            writer.close()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """The delivery's sleep: records each pause, never waits."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)


def make_alerts(
    alerts: dict[str, Any], *, clock: Clock | None = None, sleeps: Sleeps | None = None
) -> GpuAlerts:
    config = config_from_mapping({"alerts": alerts})
    state = LiveState(config, 0.0)
    cfg = config.alerts
    delays = tuple(cfg.webhook_retry_delay * 2**i for i in range(cfg.webhook_retries))
    delivery = Delivery(
        timeout=cfg.webhook_timeout,
        connect_timeout=cfg.webhook_connect_timeout,
        delays=delays,
        sleep=sleeps or Sleeps(),
    )
    return GpuAlerts(
        cfg,
        state,
        asyncio.get_running_loop(),
        delivery=delivery,
        clock=clock or Clock(),
        host="gpu-host",
    )


def sample(*used_gib: float, total_gib: float = 80) -> GpuSample:
    gpus = tuple(
        GpuReading(i, "H100", int(used * GIB), int(total_gib * GIB), 50)
        for i, used in enumerate(used_gib)
    )
    return GpuSample(available=True, gpus=gpus, sampled_at=time.time())


def node(name: str) -> Node:
    return cast(Node, SimpleNamespace(name=name))


@pytest.fixture(scope="module")
def certs() -> TlsCerts:
    return session_certs()


# --- delivery over TLS -----------------------------------------------------------------------


def test_every_format_over_https_signed_and_within_schema(run: Runner, certs: TlsCerts) -> None:
    async def main() -> None:
        receiver = TlsReceiver(certs)
        await receiver.start()
        try:
            hooks = [
                {"url": receiver.url("/generic"), "ca_file": certs.ca_file},
                {"url": receiver.url("/wecom?key=K"), "format": "wecom", "ca_file": certs.ca_file},
                {
                    "url": receiver.url("/dingtalk?access_token=T"),
                    "format": "dingtalk",
                    "secret": SECRET,
                    "ca_file": certs.ca_file,
                },
                {
                    "url": receiver.url("/feishu"),
                    "format": "feishu",
                    "secret": SECRET,
                    "ca_file": certs.ca_file,
                },
                {"url": receiver.url("/slack"), "format": "slack", "ca_file": certs.ca_file},
            ]
            alerts = make_alerts({"webhooks": hooks})
            alerts.observe(sample(40, 77))  # GPU 1 at 96.25%
            await asyncio.wait_for(alerts.wait_idle(), WAIT_S)
            by_path = {r.path: r for r in receiver.got}
            assert sorted(by_path) == ["/dingtalk", "/feishu", "/generic", "/slack", "/wecom"]
            texts = [
                check_generic(by_path["/generic"].body),
                check_wecom(by_path["/wecom"].body),
                check_dingtalk(by_path["/dingtalk"].body, by_path["/dingtalk"].raw),
                check_feishu(by_path["/feishu"].body, by_path["/feishu"].raw, SECRET),
                check_slack(by_path["/slack"].body),
            ]
            for text in texts:
                for word in ("gpu-host", "GPU 1", "H100", "96.2%", "95%", "qwen3:32b"):
                    assert word in text, (word, text)
            # DingTalk's signature rides in the query, after the robot's own token.
            assert by_path["/dingtalk"].query.startswith("access_token=T&timestamp=")
            verify_dingtalk_query(by_path["/dingtalk"].query, SECRET)
            assert by_path["/wecom"].query == "key=K"
            head = by_path["/generic"].head.lower()
            assert b"content-type: application/json" in head
            assert b"connection: close" in head
            assert dict(alerts.state.alerts) == {"gpu_memory": 1, "webhook_sent": 5}
        finally:
            await receiver.close()

    run(main())


def test_retries_a_500_with_backoff_then_succeeds(run: Runner, certs: TlsCerts) -> None:
    async def main() -> None:
        receiver = TlsReceiver(certs, statuses=[500, 503])
        await receiver.start()
        sleeps = Sleeps()
        try:
            alerts = make_alerts(
                {"webhooks": [{"url": receiver.url(), "ca_file": certs.ca_file}]}, sleeps=sleeps
            )
            alerts.observe(sample(79))
            await asyncio.wait_for(alerts.wait_idle(), WAIT_S)
            assert len(receiver.got) == 3
            assert receiver.got[0].raw == receiver.got[2].raw  # the same alert, re-sent
            assert sleeps.pauses == [1.0, 2.0]
            assert alerts.state.alerts["webhook_sent"] == 1
            assert alerts.state.alerts["webhook_failed"] == 0
        finally:
            await receiver.close()

    run(main())


@pytest.mark.parametrize(("statuses", "attempts"), [([500, 500, 500], 3), ([404], 1)])
def test_gives_up_logs_and_counts(
    run: Runner, certs: TlsCerts, statuses: list[int], attempts: int
) -> None:
    async def main() -> None:
        receiver = TlsReceiver(certs, statuses=list(statuses))
        await receiver.start()
        try:
            alerts = make_alerts({"webhooks": [{"url": receiver.url(), "ca_file": certs.ca_file}]})
            alerts.observe(sample(79))
            await asyncio.wait_for(alerts.wait_idle(), WAIT_S)
            assert len(receiver.got) == attempts  # a 4xx is final: no retry
            assert alerts.state.alerts["webhook_failed"] == 1
            assert "webhook_sent" not in alerts.state.alerts
        finally:
            await receiver.close()

    run(main())


def test_a_certificate_from_another_ca_is_refused(run: Runner, certs: TlsCerts) -> None:
    async def main() -> None:
        receiver = TlsReceiver(certs)
        await receiver.start()
        sleeps = Sleeps()
        try:
            alerts = make_alerts(
                {"webhooks": [{"url": receiver.url(), "ca_file": certs.other_ca_file}]},
                sleeps=sleeps,
            )
            alerts.observe(sample(79))
            await asyncio.wait_for(alerts.wait_idle(), WAIT_S)
            assert receiver.got == []  # nothing was sent to an unverified peer
            assert len(sleeps.pauses) == 2  # a handshake failure is retried like any
            assert alerts.state.alerts["webhook_failed"] == 1
        finally:
            await receiver.close()

    run(main())


def test_post_json_over_https_and_connect_errors(run: Runner, certs: TlsCerts) -> None:
    async def main() -> None:
        receiver = TlsReceiver(certs, statuses=[202])
        await receiver.start()
        url = receiver.url("/p?x=1")
        try:
            status = await post_json(url, b"{}", 5.0, connect_timeout=2.0, ca_file=certs.ca_file)
            assert status == 202
            assert receiver.got[0].target == "/p?x=1"
        finally:
            await receiver.close()
        with pytest.raises(OSError):
            await post_json(url, b"{}", 5.0, ca_file=certs.ca_file)  # nobody listens now

    run(main())


def test_parse_webhook_url() -> None:
    assert parse_webhook_url("https://h.example/a?b=1").port == 443
    assert parse_webhook_url("https://h.example:8443/").port == 8443
    assert parse_webhook_url("http://[::1]/x").port == 80
    assert parse_webhook_url("https://[::1]:9/x").where == "::1:9"
    for bad in ("ftp://h/", "https://u@h/", "https://h/#f", "h/x"):
        with pytest.raises(ValueError):
            parse_webhook_url(bad)


# --- thresholds, resolved messages, events, the rate limit ----------------------------------


class Recorder:
    """A delivery that records what would be sent (for the decision tests)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []

    async def send(self, url: str, body: bytes, **_: Any) -> bool:
        self.sent.append((url, json.loads(body)))
        return True


def recorded(alerts_cfg: dict[str, Any], clock: Clock) -> tuple[GpuAlerts, Recorder]:
    alerts = make_alerts(alerts_cfg, clock=clock)
    recorder = Recorder()
    alerts.delivery = cast(Delivery, recorder)
    return alerts, recorder


def test_absolute_threshold_fires_and_resolves(run: Runner) -> None:
    async def main() -> None:
        alerts, out = recorded(
            {"gpu_memory_used": "76GiB", "webhook_url": "http://127.0.0.1:9/h"}, Clock()
        )
        # 76 GiB on an 80 GiB card fires; hovering does not; 5% of 80 GiB below re-arms.
        for used in (70, 76, 79, 75, 72.1):
            alerts.observe(sample(used))
        await alerts.wait_idle()
        assert [b["alert"] for _, b in out.sent] == ["gpu_memory"]
        fired = out.sent[0][1]
        assert fired["threshold_bytes"] == 76 * GIB and "threshold_percent" not in fired
        assert "76.0 GiB" in fired["message"]
        alerts.observe(sample(71.9))
        await alerts.wait_idle()
        resolved = out.sent[1][1]
        assert resolved["alert"] == "gpu_memory_resolved"
        assert "below the threshold of 76.0 GiB again" in resolved["message"]
        # Each GPU has its own threshold state.
        alerts.observe(sample(1, 79))
        await alerts.wait_idle()
        assert out.sent[-1][1]["gpu"] == 1
        counts = dict(alerts.state.alerts)
        assert counts["gpu_memory"] == 2 and counts["gpu_memory_resolved"] == 1

    run(main())


def test_node_events_are_rate_limited_per_node(run: Runner) -> None:
    async def main() -> None:
        clock = Clock()
        alerts, out = recorded({"webhook_url": "http://127.0.0.1:9/h", "min_interval": "5m"}, clock)
        alerts.node_event("ejected", node("gpu-a"), "3 failures in a row: connection refused")
        alerts.node_event("ejected", node("gpu-b"), "timeout")  # another node: its own limit
        clock.now += 60
        alerts.node_event("ejected", node("gpu-a"), "again")  # within 5m: held back
        alerts.node_event("back", node("gpu-a"), "")
        clock.now += 300
        alerts.node_event("ejected", node("gpu-a"), "once more")
        await alerts.wait_idle()
        sent = [(b["alert"], b["node"]) for _, b in out.sent]
        assert sent == [
            ("node_ejected", "gpu-a"),
            ("node_ejected", "gpu-b"),
            ("node_back", "gpu-a"),
            ("node_ejected", "gpu-a"),
        ]
        assert "connection refused" in out.sent[0][1]["message"]
        assert "gpu-host" in out.sent[0][1]["message"]
        assert alerts.state.alerts["held_back"] == 1

    run(main())


def test_sustained_queue_full_and_upstream_errors(run: Runner) -> None:
    async def main() -> None:
        clock = Clock()
        alerts, out = recorded(
            {
                "webhook_url": "http://127.0.0.1:9/h",
                "queue_full_per_minute": 10,
                "upstream_errors_per_minute": 5,
            },
            clock,
        )
        rejected = alerts.state.admission.rejected
        idle = GpuSample.unavailable("no GPU")  # the tick samples the counters anyway
        # 30 refusals spread over 5 minutes: never more than 10 in a minute.
        for _ in range(30):
            rejected["queue_full"] += 1
            clock.now += 10
            alerts.observe(idle)
        assert out.sent == []
        # Then 11 within 20 seconds: sustained.
        for _ in range(11):
            rejected["queue_full"] += 1
            clock.now += 2
            alerts.observe(idle)
        alerts.state.upstream_errors["upstream_unavailable"] += 6
        alerts.observe(idle)
        await alerts.wait_idle()
        kinds = [b["alert"] for _, b in out.sent]
        assert kinds == ["queue_full", "upstream_errors"]
        assert out.sent[0][1]["count"] == 11
        assert "503" in out.sent[0][1]["message"]
        assert "upstream_unavailable 6" in out.sent[1][1]["message"]
        # Still refusing: the rate limit holds the next message back.
        for _ in range(12):
            rejected["queue_full"] += 1
            clock.now += 1
            alerts.observe(idle)
        assert [b["alert"] for _, b in out.sent] == kinds

    run(main())


def test_event_switches_and_per_webhook_filters(run: Runner) -> None:
    async def main() -> None:
        alerts, out = recorded(
            {
                "events": {"node_back": False},
                "webhooks": [
                    {"url": "http://127.0.0.1:9/gpu", "events": ["gpu_memory"]},
                    {"url": "http://127.0.0.1:9/all"},
                ],
            },
            Clock(),
        )
        alerts.observe(sample(79))
        alerts.node_event("ejected", node("gpu-a"), "down")
        alerts.node_event("back", node("gpu-a"), "")  # switched off: not even counted
        await alerts.wait_idle()
        sent = sorted((url.rpartition("/")[2], b["alert"]) for url, b in out.sent)
        assert sent == [("all", "gpu_memory"), ("all", "node_ejected"), ("gpu", "gpu_memory")]
        assert "node_back" not in alerts.state.alerts

    run(main())


def test_rate_watch_and_cooldown_are_pure() -> None:
    watch = RateWatch(window=60)
    assert [watch.update(t, n) for t, n in ((0, 0), (30, 5), (60, 9), (90, 12))] == [0, 5, 9, 7]
    cooldown = Cooldown(300)
    assert [cooldown.allow("k", t) for t in (0, 299, 300)] == [True, False, True]


# --- configuration and wiring -----------------------------------------------------------------


def test_webhook_config_loads_with_legacy_url() -> None:
    config = config_from_mapping(
        {
            "alerts": {
                "webhook_url": "https://hooks.example/x",
                "gpu_memory_used": "76GiB",
                "webhooks": [
                    {"url": "https://oapi.dingtalk.com/robot/send?access_token=T",
                     "format": "DingTalk", "secret": SECRET, "events": ["Node_Ejected"]},
                ],
            }
        }
    )  # fmt: skip
    hook = config.alerts.webhooks[0]
    assert (hook.format, hook.events) == ("dingtalk", ("node_ejected",))
    assert config.alerts.gpu_memory_used == 76 * GIB
    assert Config().alerts.min_interval == 300.0


@pytest.mark.parametrize(
    ("hook", "start"),
    [
        ({"url": "ftp://CANARY/"}, "alerts.webhooks[0].url: expected"),
        ({"url": "https://h/CANARY", "format": "teams"}, "alerts.webhooks[0].format: expected"),
        ({"url": "https://h/", "format": "slack", "secret": "CANARY"}, "alerts.webhooks[0]: "),
        ({"url": "https://h/", "secret": " "}, "alerts.webhooks[0].secret: expected"),
        ({"url": "https://h/", "events": ["CANARY"]}, "alerts.webhooks[0].events[0]: expected"),
        ({"url": "http://h/CANARY", "ca_file": "/ca.pem"}, "alerts.webhooks[0]: "),
        ({"format": "wecom"}, "alerts.webhooks[0]: "),
        ({"url": "https://h/", "token": "CANARY"}, "unknown key under 'alerts.webhooks[0]'"),
    ],
)
def test_webhook_errors_never_show_urls_or_secrets(hook: dict[str, Any], start: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_mapping({"alerts": {"webhooks": [hook]}})
    message = str(info.value)
    assert message.startswith(start), message
    assert "CANARY" not in message


@pytest.fixture
def gateway(loop_kind: str) -> Iterator[Harness]:
    settings = {"gpu.enabled": False, "alerts.webhook_retry_delay": "10ms"}
    with Harness(settings, loop_kind=loop_kind) as h:
        yield h


def test_gateway_wires_node_events_to_the_alerts(gateway: Harness) -> None:
    h = gateway
    alerts = h.gateway.gpu.alerts
    assert isinstance(alerts, GpuAlerts)
    scheduler = h.gateway.nodes.scheduler
    assert scheduler.on_node_event is not None
    real = h.gateway.nodes.first
    h.read(lambda: scheduler.on_node_event and scheduler.on_node_event("ejected", real, "x"))
    assert h.read(lambda: alerts.state.alerts["node_ejected"]) == 1
    assert alerts.delivery.delays == (0.01, 0.02)


def test_a_model_left_without_a_healthy_node_is_an_alert() -> None:
    """Two nodes, a model only n1 serves: n1's ejection says so, n0's does not."""
    nodes = [
        {"node": {"models": ["qwen3:32b"]}},
        {"node": {"models": ["qwen3:32b", "only-on-n1"]}},
    ]
    settings = {"routing.eject_after": 1, "routing.eject_base": "60s", "gpu.enabled": False}
    with NodesHarness(nodes, settings) as h:
        state = h.gateway.state
        scheduler = h.gateway.nodes.scheduler

        def eject(name: str) -> None:
            async def go() -> None:
                scheduler.node_failed(h.gateway.nodes.get(name), "refused")  # type: ignore[arg-type]

            h.call(go)

        eject("n0")
        assert h.read(lambda: state.alerts["model_down"]) == 0  # n1 still serves qwen3:32b
        eject("n1")
        assert h.read(lambda: state.alerts["model_down"]) == 2  # both models now, one each
        assert h.read(lambda: state.alerts["node_ejected"]) == 2
