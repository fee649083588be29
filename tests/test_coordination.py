"""Several gateway instances sharing one node's slots and the rate limits through a real
redis-server on loopback; Redis taken away and brought back; the local default untouched.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from harness import CALL_TIMEOUT, Harness, admin_call, post_json, request
from redis_helpers import RedisServer

from clawproxy.config import ConfigError, config_from_mapping
from clawproxy.gateway import Gateway
from clawproxy.process.workers import check_workers, worker_config

CHAT = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
def redis(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path).start()
    try:
        yield server
    finally:
        server.stop()


def shared(url: str, **extra: object) -> dict[str, object]:
    return {
        "coordination.backend": "redis",
        "coordination.url": url,
        "coordination.lease_ttl": "1s",
        "coordination.op_timeout": "200ms",
        **extra,
    }


def stream(h: Harness, max_tokens: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=CALL_TIMEOUT)
    try:
        body = json.dumps({**CHAT, "stream": True, "max_tokens": max_tokens}).encode()
        conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        return resp.status
    finally:
        conn.close()


def coordination_of(h: Harness) -> dict[str, Any]:
    status, body = admin_call(h, "GET", "/health")
    assert status in (200, 503)
    result: dict[str, Any] = body["coordination"]
    return result


def test_two_instances_never_exceed_the_node_cap_together(redis: RedisServer) -> None:
    settings = shared(redis.url, **{"gateway.max_concurrent": 2, "gateway.queue_size": 20})
    with Harness(settings, sim_options={"token_rate": 50.0}) as a:
        b_settings = {**settings, "model.endpoint": a.sim.endpoint}
        with Harness(b_settings, start_simulator=False) as b:
            statuses: list[int] = []
            threads = [
                threading.Thread(target=lambda h=h: statuses.append(stream(h, 12)))
                for h in [a, b] * 5
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(CALL_TIMEOUT)
            assert statuses == [200] * 10
            # Each instance alone would allow 2: together they held at most 2.
            assert a.read(lambda: a.sim.max_active_streams) == 2
            assert a.settled() and b.settled()
            assert coordination_of(a)["live_instances"] == 2
            assert redis.command("ZCARD", "{clawproxy}:slots:default") == b":0\r\n"


def test_the_rate_limit_is_shared(redis: RedisServer) -> None:
    limits = {
        "gateway.rate_limit.requests_per_second": 0.5,
        "gateway.rate_limit.burst": 3,
    }
    with (
        Harness(shared(redis.url, **limits)) as a,
        Harness(
            {**shared(redis.url, **limits), "model.endpoint": a.sim.endpoint}, start_simulator=False
        ) as b,
    ):
        results = [request(h, "GET", "/v1/models") for h in [a, b, a, b, a, b]]
        statuses = [status for status, _, _ in results]
        # 3 in all, whichever instance was asked, not 3 each.
        assert sorted(statuses) == [200, 200, 200, 429, 429, 429]
        refused = [headers for status, headers, _ in results if status == 429]
        assert all(1 <= int(h["retry-after"]) <= 2 for h in refused)


def test_a_dead_instances_slot_comes_back_after_the_lease_ttl(redis: RedisServer) -> None:
    with Harness(shared(redis.url, **{"gateway.max_concurrent": 1})) as h:
        assert stream(h, 2) == 200  # the slot set exists, empty
        # A stopped instance's lease: it will never be released, only expire.
        expiry = int(redis.command("TIME").split(b"\r\n")[2]) * 1000 + 400
        redis.command("ZADD", "{clawproxy}:slots:default", str(expiry), "ghost:1")
        assert stream(h, 2) == 200  # waited in the queue until the ghost expired
        assert coordination_of(h)["lease_reclaimed"] == 1


def test_redis_down_at_start_degrades_and_comes_back(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # not started: nothing listens there yet
    with Harness(shared(server.url)) as h:
        assert coordination_of(h)["mode"] == "degraded"
        assert post_json(h, "/v1/chat/completions", CHAT)[0] == 200  # served anyway
        server.start()
        try:
            slots = h.gateway.coordination.slots  # type: ignore[union-attr]
            assert h.call(lambda: h.wait_until(lambda: slots.active, 5))
            assert coordination_of(h)["mode"] == "redis"
            assert post_json(h, "/v1/chat/completions", CHAT)[0] == 200
        finally:
            server.stop()


def test_fail_closed_refuses_while_redis_is_down(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    with Harness(shared(server.url, **{"coordination.on_error": "fail_closed"})) as h:
        status, headers, body = post_json(h, "/v1/chat/completions", CHAT)
        assert status == 503 and headers["retry-after"] == "1"
        assert json.loads(body)["error"]["code"] == "coordination_unavailable"


def test_leases_held_are_put_back_when_redis_returns_empty(redis: RedisServer) -> None:
    settings = shared(redis.url, **{"gateway.max_concurrent": 3})
    with Harness(settings, sim_options={"token_rate": 20.0}) as h:
        done: list[int] = []
        running = threading.Thread(target=lambda: done.append(stream(h, 60)))  # ~3 s
        running.start()
        assert h.call(lambda: h.wait_until(lambda: h.gateway.state.admission.active == 1, 5))
        assert redis.command("ZCARD", "{clawproxy}:slots:default") == b":1\r\n"
        redis.stop()  # Redis goes away, and comes back with nothing in it
        slots = h.gateway.coordination.slots  # type: ignore[union-attr]
        assert h.call(lambda: h.wait_until(lambda: not slots.active, 5))
        assert coordination_of(h)["mode"] == "degraded"
        redis.start()
        assert h.call(lambda: h.wait_until(lambda: slots.active, 5))
        # The stream still running holds its slot in the new Redis too.
        assert redis.command("ZCARD", "{clawproxy}:slots:default") == b":1\r\n"
        running.join(CALL_TIMEOUT)
        assert done == [200]
        assert coordination_of(h)["breaker_trips"] == 1


def test_metrics_show_the_mode_and_redis_latency(redis: RedisServer) -> None:
    with Harness(shared(redis.url)) as h:
        assert post_json(h, "/v1/chat/completions", CHAT)[0] == 200
        conn = http.client.HTTPConnection("127.0.0.1", h.gateway.admin_port, timeout=5)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        assert 'clawproxy_coordination_mode{mode="redis"} 1' in text
        count = [
            line
            for line in text.splitlines()
            if line.startswith("clawproxy_redis_op_seconds_count")
        ]
        assert count and int(float(count[0].split()[-1])) >= 1
        assert "clawproxy_lease_lost_total 0" in text


def test_local_is_the_default_and_says_so_on_health() -> None:
    with Harness() as h:
        assert h.gateway.coordination is None
        assert coordination_of(h) == {"mode": "local"}


def test_missing_redis_extra_is_a_clear_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "redis.asyncio", None)
    config = config_from_mapping({}, overrides=shared("redis://127.0.0.1:1/0"))

    async def build() -> None:
        Gateway(config)

    with pytest.raises(ConfigError, match=r"pip install 'clawproxy\[redis\]'"):
        asyncio.run(build())


def test_workers_do_not_split_shared_slots() -> None:
    nodes = [{"name": "a", "url": "http://127.0.0.1:1", "max_concurrent": 2}]
    cfg = config_from_mapping(
        {},
        overrides={**shared("redis://127.0.0.1:1/0"), "gateway.max_concurrent": 2, "nodes": nodes},
    )
    check_workers(cfg, 4)  # more workers than slots: fine, they share them in Redis
    workers = [worker_config(cfg, i, 4, 8123) for i in range(4)]
    assert {w.nodes[0].max_concurrent for w in workers} == {2}
    assert {w.gateway.max_concurrent for w in workers} == {2}


def test_config_errors_name_the_key() -> None:
    for overrides, key in (
        ({"coordination.backend": "etcd"}, "coordination.backend"),
        ({"coordination.url": "http://x"}, "coordination.url"),
        ({"coordination.op_timeout": "10s"}, "coordination.op_timeout"),
        ({"coordination.on_error": "panic"}, "coordination.on_error"),
    ):
        with pytest.raises(ConfigError) as info:
            config_from_mapping({}, overrides=overrides)
        assert str(info.value).startswith(key), info.value
    with pytest.raises(ConfigError) as info:
        config_from_mapping({}, overrides={"coordination.url": "redis://:hunter2@[::1"})
    assert "hunter2" not in str(info.value)


def test_stats_show_the_mode_and_the_live_instances(redis: RedisServer) -> None:
    with Harness(shared(redis.url)) as h:
        status, stats = admin_call(h, "GET", "/stats")
        assert status == 200
        assert stats["coordination"]["mode"] == "redis"
        assert stats["coordination"]["live_instances"] == 1
