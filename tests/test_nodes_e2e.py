"""Several simulated Ollama nodes behind one gateway, over loopback with real clients.

Each test names the promise it checks: caps held under aborts, failover only before the
first byte, model-aware routing, ejection and readmission, live changes, visibility.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import threading
from typing import Any

import pytest
from harness import (
    CALL_TIMEOUT,
    NodesHarness,
    admin_call,
    open_stream,
    post_json,
    read_until_closed,
    request,
    status_of,
)
from tls_certs import server_context, session_certs

from clawproxy.config import ConfigError, config_from_mapping
from clawproxy.simulator.script import Fault

CHAT = {"model": "qwen3:32b", "messages": [{"role": "user", "content": "hi"}]}


def chat(h: NodesHarness, **extra: Any) -> tuple[int, dict[str, str], bytes]:
    return post_json(h, "/v1/chat/completions", {**CHAT, **extra})


def generations(h: NodesHarness, index: int) -> int:
    """Chat requests node ``index`` received."""
    return h.read(lambda: sum(1 for r in h.sims[index].requests if r.path == "/api/chat"))


def stream_lines(h: NodesHarness, body: dict[str, Any]) -> tuple[int, list[str]]:
    conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=CALL_TIMEOUT)
    try:
        data = json.dumps({**body, "stream": True}).encode()
        conn.request(
            "POST", "/v1/chat/completions", body=data, headers={"Content-Type": "application/json"}
        )
        resp = conn.getresponse()
        return resp.status, resp.read().decode().splitlines()
    finally:
        conn.close()


def test_each_node_cap_holds_with_sixty_clients_and_random_aborts() -> None:
    nodes = [
        {"token_rate": 400.0, "node": {"max_concurrent": 2}},
        {"token_rate": 400.0, "node": {"max_concurrent": 3}},
        {"token_rate": 400.0, "node": {"max_concurrent": 1}},
    ]
    with NodesHarness(nodes, {"gateway.queue_size": 100, "gateway.queue_timeout": "20s"}) as h:
        rng = random.Random(5)
        statuses: list[int] = []

        def client(abort: bool) -> None:
            conn = http.client.HTTPConnection("127.0.0.1", h.port, timeout=CALL_TIMEOUT)
            try:
                data = json.dumps({**CHAT, "stream": True, "max_tokens": 8}).encode()
                conn.request(
                    "POST",
                    "/v1/chat/completions",
                    body=data,
                    headers={"Content-Type": "application/json"},
                )
                resp = conn.getresponse()
                statuses.append(resp.status)
                if abort:
                    resp.read(40)
                    return  # closes mid-stream
                resp.read()
            finally:
                conn.close()

        threads = [threading.Thread(target=client, args=(rng.random() < 0.3,)) for _ in range(60)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(CALL_TIMEOUT)
        assert h.settled(10)
        assert statuses.count(200) == 60
        peaks = h.read(lambda: [sim.max_active_streams for sim in h.sims])
        assert peaks[0] <= 2 and peaks[1] <= 3 and peaks[2] <= 1
        assert sum(generations(h, i) for i in range(3)) == 60
        # The gateway's own count agrees, and every slot came back.
        rows = h.read(lambda: h.gateway.nodes.describe())
        assert [row["peak_inflight"] for row in rows] == peaks
        assert all(row["inflight"] == 0 for row in rows)


def test_refused_node_fails_over_with_nothing_duplicated() -> None:
    with NodesHarness([{"node": {"priority": 1}}, {}]) as h:
        assert chat(h)[0] == 200  # n0 (the higher tier) serves, and its model list is known
        h.call(h.sims[0].close)  # n0 refuses connections from now on
        status, headers, body = chat(h)
        assert status == 200, body
        assert json.loads(body)["choices"][0]["message"]["content"]
        assert generations(h, 1) == 1
        row = h.read(lambda: h.node("n0").failovers.copy())
        assert row == {"unavailable": 1}
        assert "x-clawproxy-node" not in headers  # off by default: topology stays private


def test_node_header_names_the_node_when_exposed() -> None:
    settings = {"gateway.expose_node_header": True}
    with NodesHarness([{"node": {"priority": 1}}, {}], settings) as h:
        status, headers, _ = chat(h)
        assert status == 200 and headers["x-clawproxy-node"] == "n0"
        h.call(h.sims[0].close)
        status, headers, _ = chat(h, stream=True)
        assert status == 200 and headers["x-clawproxy-node"] == "n1"


def test_ollama_503_moves_the_request_and_marks_the_node_busy_not_failed() -> None:
    nodes = [{"node": {"priority": 1}}, {}]
    with NodesHarness(nodes) as h:
        assert chat(h)[0] == 200
        h.sims[0].default_fault = Fault(status=503)
        status, _, body = chat(h)
        assert status == 200, body
        assert generations(h, 1) == 1
        n0 = h.node("n0")
        assert h.read(lambda: (n0.failovers["busy"], n0.health.failures)) == (1, 0)
        # Busy for a moment: the next request goes straight to n1.
        assert chat(h)[0] == 200
        assert generations(h, 0) == 2 and generations(h, 1) == 2


def test_node_dying_mid_stream_is_an_error_event_and_never_retried() -> None:
    with NodesHarness([{"node": {"priority": 1}}, {}]) as h:
        h.sims[0].default_fault = Fault(reset_after=2)
        with open_stream(h) as sock:
            reply = read_until_closed(sock)
        assert status_of(reply) == 200
        assert b'data: {"error"' in reply
        assert b"data: [DONE]" not in reply
        assert generations(h, 1) == 0  # no other node received it
        assert h.read(lambda: h.node("n0").health.failures) == 1


def test_hung_node_hits_the_deadline_and_its_slot_returns() -> None:
    nodes = [{"node": {"max_concurrent": 1}}]
    with NodesHarness(nodes, {"server.timeout": "300ms"}) as h:
        h.sims[0].default_fault = Fault(blackhole=True)
        status, _, body = chat(h)
        assert status == 504, body
        assert h.settled(5)
        assert h.read(lambda: h.node("n0").inflight) == 0


def test_model_on_one_node_is_never_sent_to_another() -> None:
    nodes = [{"models": ["qwen3:32b"]}, {"models": ["only-here"]}]
    with NodesHarness(nodes) as h:
        for _ in range(4):
            assert chat(h, model="only-here")[0] == 200
        assert generations(h, 0) == 0 and generations(h, 1) == 4
        status, _, body = chat(h, model="nowhere")
        assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"
        # /v1/models lists the union of what the nodes serve.
        _, _, listing = request(h, "GET", "/v1/models")
        ids = {m["id"] for m in json.loads(listing)["data"]}
        assert {"qwen3:32b", "only-here:latest"} <= ids


def test_restarted_node_is_ejected_then_readmitted_after_its_trial() -> None:
    settings = {
        "routing.eject_after": 1,
        "routing.eject_base": "200ms",
        "routing.probe_interval": "100ms",
    }
    with NodesHarness([{"node": {"priority": 1}}, {}], settings) as h:
        port = h.sims[0].port
        h.call(h.sims[0].close)
        assert chat(h)[0] == 200  # failed over, and n0 is ejected
        n0 = h.node("n0")
        assert h.read(lambda: n0.state().value) == "ejected"

        async def restart() -> None:
            from clawproxy.simulator import OllamaSimulator

            sim = OllamaSimulator(port=port, token_rate=None)
            await sim.start()
            h.sims[0] = sim

        h.call(restart)
        # The probe after the backoff is the trial: n0 comes back with no user at risk.
        assert h.call(lambda: h.wait_until(lambda: n0.state().value == "up", 5))
        assert chat(h)[0] == 200
        assert generations(h, 0) == 1


def test_all_nodes_ejected_is_503_with_retry_after() -> None:
    settings = {"routing.eject_after": 1, "routing.eject_base": "60s"}
    with NodesHarness([{}, {}], settings) as h:
        for sim in h.sims:
            h.call(sim.close)
        status, _, _ = chat(h)
        assert status == 502  # both refused: the error met, as with one Ollama
        status, headers, body = chat(h)
        assert status == 503 and json.loads(body)["error"]["code"] == "no_healthy_node"
        assert 1 <= int(headers["retry-after"]) <= 60


def test_node_added_through_the_admin_api_gets_traffic() -> None:
    settings = {"routing.probe_interval": "100ms"}
    with NodesHarness([{"node": {"max_concurrent": 1}}], settings) as h:

        async def new_sim() -> str:
            from clawproxy.simulator import OllamaSimulator

            sim = OllamaSimulator(token_rate=None)
            await sim.start()
            h.sims.append(sim)
            return sim.endpoint

        url = h.call(new_sim)
        status, body = admin_call(h, "POST", "/nodes", {"name": "extra", "url": url, "priority": 5})
        assert status == 201, body
        assert chat(h)[0] == 200
        assert generations(h, 1) == 1
        status, listing = admin_call(h, "GET", "/nodes")
        assert [n["name"] for n in listing["nodes"]] == ["n0", "extra"]
        # The same name twice, a bad URL, a cap below 1: refused whole, with the key named.
        assert admin_call(h, "POST", "/nodes", {"name": "extra", "url": url})[0] == 409
        status, err = admin_call(h, "POST", "/nodes", {"name": "x", "url": "ftp://a"})
        assert status == 400 and err["error"]["param"] == "url"
        status, err = admin_call(
            h, "POST", "/nodes", {"name": "y", "url": url, "max_concurrent": 0}
        )
        assert status == 400 and "max_concurrent" in err["error"]["message"]
        assert len(admin_call(h, "GET", "/nodes")[1]["nodes"]) == 2


def test_drained_node_finishes_its_streams_and_receives_nothing_new() -> None:
    with NodesHarness([{"token_rate": 50.0, "node": {"priority": 1}}, {}]) as h:
        results: list[tuple[int, list[str]]] = []
        running = threading.Thread(
            target=lambda: results.append(stream_lines(h, {**CHAT, "max_tokens": 10}))
        )
        running.start()
        n0 = h.node("n0")
        assert h.call(lambda: h.wait_until(lambda: n0.inflight == 1, 5))
        status, body = admin_call(h, "POST", "/nodes/n0/drain")
        assert status == 200 and body["status"] == "draining"
        # Not yet idle: removal is refused.
        assert admin_call(h, "DELETE", "/nodes/n0")[0] == 409
        assert chat(h)[0] == 200
        assert generations(h, 1) == 1
        running.join(CALL_TIMEOUT)
        status, lines = results[0]
        assert status == 200 and lines[-2:] == ["data: [DONE]", ""]
        assert generations(h, 0) == 1
        assert admin_call(h, "DELETE", "/nodes/n0")[0] == 200
        assert admin_call(h, "DELETE", "/nodes/n0")[0] == 404


def test_sighup_reload_applies_caps_adds_and_drains_and_refuses_a_bad_change_whole() -> None:
    with NodesHarness([{}, {}]) as h:
        urls = [sim.endpoint for sim in h.sims]

        def reload(nodes: list[dict[str, Any]]) -> list[str]:
            config = config_from_mapping({}, overrides={"nodes": nodes, "model.endpoint": urls[0]})

            async def apply() -> list[str]:
                return h.gateway.reload_nodes(config)

            return h.call(apply)

        changes = reload([{"name": "n0", "url": urls[0], "max_concurrent": 7}])
        assert changes == ["updated n0", "draining n1"]
        assert h.read(lambda: h.node("n0").cap) == 7
        assert h.read(lambda: h.gateway.nodes.get("n1")) is None  # idle: forgotten at once
        with pytest.raises(Exception, match="url or tls changed"):
            reload([{"name": "n0", "url": urls[1]}, {"name": "n2", "url": urls[1]}])
        assert h.read(lambda: [n.name for n in h.gateway.nodes.nodes()]) == ["n0"]


def test_config_errors_name_the_key() -> None:
    def bad(nodes: list[dict[str, Any]]) -> str:
        with pytest.raises(ConfigError) as info:
            config_from_mapping({"nodes": nodes})
        return str(info.value)

    url = "http://127.0.0.1:11434"
    assert "share the name 'a'" in bad([{"name": "a", "url": url}, {"name": "a", "url": url}])
    assert bad([{"name": "a", "url": "ftp://x"}]).startswith("nodes[0].url:")
    assert bad([{"name": "a", "url": url, "max_concurrent": 0}]).startswith(
        "nodes[0].max_concurrent:"
    )
    assert "did you mean 'nodes[0].weight'" in bad([{"name": "a", "url": url, "wieght": 2}])
    assert "'url' is required" in bad([{"name": "a"}])
    assert "tls block but an http:// url" in bad(
        [{"name": "a", "url": url, "tls": {"verify": False}}]
    )


def test_metrics_and_stats_show_every_node() -> None:
    with NodesHarness([{}, {}]) as h:
        assert chat(h)[0] == 200
        conn = http.client.HTTPConnection("127.0.0.1", h.gateway.admin_port, timeout=CALL_TIMEOUT)
        with contextlib.closing(conn):
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        assert 'clawproxy_node_capacity{node="n0"} 4' in text
        assert 'clawproxy_node_state{node="n1",state="up"} 1' in text
        total = sum(
            int(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("clawproxy_node_requests_total{")
        )
        assert total == 1
        status, stats = admin_call(h, "GET", "/stats")
        assert status == 200
        assert [row["name"] for row in stats["nodes"]] == ["n0", "n1"]
        assert "url" not in stats["nodes"][0]  # the UI shares this view: no topology


def test_model_load_warms_the_named_nodes() -> None:
    with NodesHarness([{}, {}]) as h:
        status, body = admin_call(
            h, "POST", "/v1/model/load", {"model": "qwen3:32b", "nodes": ["n1"]}
        )
        assert status == 200, body
        assert [n["node"] for n in body["nodes"]] == ["n1"]
        assert h.read(lambda: h.sims[1].loaded_models) == ["qwen3:32b"]
        assert h.read(lambda: h.sims[0].loaded_models) == []
        status, body = admin_call(h, "POST", "/v1/model/load", {"model": "qwen3:32b"})
        assert status == 200 and {n["node"] for n in body["nodes"]} == {"n0", "n1"}
        status, body = admin_call(
            h, "POST", "/v1/model/load", {"model": "qwen3:32b", "nodes": ["zz"]}
        )
        assert status == 400 and body["error"]["param"] == "nodes"


@pytest.mark.parametrize("affinity", ["session", "prefix"])
def test_session_affinity_keeps_a_session_on_its_node(affinity: str) -> None:
    settings = {"routing.affinity": affinity, "routing.affinity_margin": 10}
    with NodesHarness([{}, {}], settings) as h:
        warm_both(h)  # else "warm first" alone would keep every request on one node
        headers = {"X-Session-Id": "conv-42"}
        for _ in range(10):
            assert post_json(h, "/v1/chat/completions", CHAT, headers)[0] == 200
        # Equal nodes share by random tie-break: 10 on one node by chance is 1 in 512.
        assert sorted([generations(h, 0), generations(h, 1)]) == [0, 10]


def warm_both(h: NodesHarness) -> None:
    status, body = admin_call(h, "POST", "/v1/model/load", {"model": "qwen3:32b"})
    assert status == 200 and len(body["nodes"]) == 2
    assert h.read(lambda: [sorted(n.loaded) for n in h.gateway.nodes.nodes()]) == [
        ["qwen3:32b"],
        ["qwen3:32b"],
    ]


def test_prefix_affinity_follows_the_conversation_without_a_header() -> None:
    settings = {"routing.affinity": "prefix", "routing.affinity_margin": 10}
    with NodesHarness([{}, {}], settings) as h:
        warm_both(h)
        start = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
        turns = [*start, {"role": "assistant", "content": "hello"}]
        for n in range(10):
            # A growing conversation: same start, a new user turn each time.
            body = {**CHAT, "messages": [*turns, {"role": "user", "content": f"q{n}"}]}
            assert post_json(h, "/v1/chat/completions", body)[0] == 200
        assert sorted([generations(h, 0), generations(h, 1)]) == [0, 10]


def test_the_queue_is_shared_by_the_nodes() -> None:
    nodes = [{"token_rate": 100.0, "node": {"max_concurrent": 1}}] * 2
    with NodesHarness(nodes, {"gateway.queue_size": 4}) as h:
        done: list[int] = []
        threads = [
            threading.Thread(target=lambda: done.append(chat(h, max_tokens=5)[0])) for _ in range(6)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(CALL_TIMEOUT)
        assert done == [200] * 6
        assert h.read(lambda: [sim.max_active_streams for sim in h.sims]) == [1, 1]


def test_a_node_that_never_accepts_the_connection_fails_over() -> None:
    """A node whose connect never completes (its SYNs dropped, as a powered-off box's are)
    costs the connect timeout once, then the request moves: nothing was sent there."""
    settings = {"upstream.connect_timeout": "200ms"}
    with NodesHarness([{"node": {"priority": 1}}, {}], settings) as h:
        assert chat(h)[0] == 200  # n0's model list is known
        # A listener that never accepts, its accept queue full: Linux drops further SYNs.
        full = socket.socket()
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        fillers = [socket.create_connection(full.getsockname(), timeout=5)]
        try:

            async def point_n0_there() -> None:
                pool = h.node("n0").pool
                pool.close()  # no idle keep-alive connection to the old port
                pool.port = full.getsockname()[1]

            h.call(point_n0_there)
            status, _, body = chat(h)
            assert status == 200, body
            assert h.read(lambda: h.node("n0").failovers["connect_timeout"]) == 1
        finally:
            for sock in fillers:
                sock.close()
            full.close()


def test_https_node_with_its_own_ca() -> None:
    """A node behind TLS (real TLS on loopback, a throwaway CA given to the gateway)."""
    certs = session_certs()
    nodes = [
        {
            "ssl_context": server_context(certs),
            "node": {"tls": {"ca_file": certs.ca_file}},
        }
    ]
    with NodesHarness(nodes) as h:
        assert h.sims[0].endpoint.startswith("https://")
        status, _, body = chat(h, stream=True)
        assert status == 200 and b"data: [DONE]" in body
        assert chat(h)[0] == 200
        assert generations(h, 0) == 2


def test_https_node_with_an_unknown_ca_is_a_clear_502() -> None:
    certs = session_certs()
    nodes = [
        {
            "ssl_context": server_context(certs),
            "node": {"tls": {"ca_file": certs.other_ca_file}},
        }
    ]
    with NodesHarness(nodes) as h:
        status, _, body = chat(h)
        assert status == 502
        assert "certificate verify failed" in json.loads(body)["error"]["message"]
