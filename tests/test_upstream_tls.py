"""HTTPS to an Ollama node: ``parse_node_url``, ``client_context`` and a TLS ``UpstreamPool``.

The peer is real: the simulator serving TLS on loopback with throwaway certificates from
``tls_certs`` (made with the openssl command line). The pool is the gateway's own, built
with ``UpstreamPool.for_endpoint`` exactly as a node is. Every socket test runs on stock
asyncio and on uvloop.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from harness import Runner
from hypothesis import given
from hypothesis import strategies as st
from tls_certs import OPENSSL, TlsCerts, server_context, session_certs

from clawproxy.errors import UpstreamTimeout, UpstreamUnavailable
from clawproxy.net import parse_endpoint, parse_node_url
from clawproxy.ollama.pool import UpstreamPool
from clawproxy.ollama.tls import client_context
from clawproxy.simulator import OllamaSimulator

IO_TIMEOUT = 5.0
# A handshake that never comes must fail within this (the pool's connect timeout).
SHORT_CONNECT_TIMEOUT = 0.2
BODY_LIMIT = 1 << 20
CHAT = orjson.dumps({"model": "qwen3:32b", "messages": [{"role": "user", "content": "hi"}]})


@pytest.fixture
def certs() -> TlsCerts:
    return session_certs()


def context(
    *,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
    verify: bool = True,
) -> ssl.SSLContext:
    return client_context(ca_file=ca_file, cert_file=cert_file, key_file=key_file, verify=verify)


@contextlib.asynccontextmanager
async def tls_pool(
    endpoint: str, ssl_context: ssl.SSLContext, connect_timeout: float = IO_TIMEOUT
) -> AsyncIterator[UpstreamPool]:
    pool = UpstreamPool.for_endpoint(
        endpoint,
        connect_timeout=connect_timeout,
        io_timeout=IO_TIMEOUT,
        max_idle=4,
        loop=asyncio.get_running_loop(),
        ssl_context=ssl_context,
    )
    try:
        yield pool
    finally:
        pool.close()
        await asyncio.sleep(0)  # let aborted transports report connection_lost


async def get(pool: UpstreamPool, method: bytes, target: bytes, body: bytes | None) -> bytes:
    conn = await pool.send(method, target, body)
    data = await conn.read_body(BODY_LIMIT)
    conn.release()
    return data


# -- the pool over TLS ------------------------------------------------------------------------


def test_round_trip_over_tls_reuses_the_connection(run: Runner, certs: TlsCerts) -> None:
    async def main() -> None:
        async with OllamaSimulator(token_rate=None, ssl_context=server_context(certs)) as sim:
            assert sim.endpoint.startswith("https://")
            async with tls_pool(sim.endpoint, context(ca_file=certs.ca_file)) as pool:
                version = await get(pool, b"GET", b"/api/version", None)
                assert orjson.loads(version)["version"]
                body = await get(pool, b"POST", b"/api/chat", CHAT)
                assert body.splitlines()[-1].startswith(b'{"model":"qwen3:32b"')
                assert b'"done":true' in body
                assert (pool.connects, pool.idle_connections) == (1, 1)
            assert sim.connections_total == 1
            # The Host header keeps the port, as for plain http.
            assert sim.requests[0].header("host") == f"127.0.0.1:{sim.port}"

    run(main())


def test_unknown_ca_fails_verification(run: Runner, certs: TlsCerts) -> None:
    async def main() -> None:
        async with OllamaSimulator(token_rate=None, ssl_context=server_context(certs)) as sim:
            for ssl_context in (context(ca_file=certs.other_ca_file), context()):
                async with tls_pool(sim.endpoint, ssl_context) as pool:
                    with pytest.raises(UpstreamUnavailable) as caught:
                        await pool.send(b"GET", b"/api/version", None)
                    message = caught.value.message
                    assert f"127.0.0.1:{sim.port}" in message
                    assert "certificate verify failed" in message
                    assert pool.open_connections == 0
            assert len(sim.requests) == 0

    run(main())


def test_host_name_is_checked(run: Runner, certs: TlsCerts) -> None:
    """The certificate names 127.0.0.1 and localhost; 127.0.0.2 (loopback too) is refused
    even with the right CA, and accepted with ``verify=False``."""

    async def main() -> None:
        sim = OllamaSimulator(host="127.0.0.2", token_rate=None, ssl_context=server_context(certs))
        async with sim:
            async with tls_pool(sim.endpoint, context(ca_file=certs.ca_file)) as pool:
                with pytest.raises(UpstreamUnavailable, match="mismatch"):
                    await pool.send(b"GET", b"/api/version", None)
            async with tls_pool(sim.endpoint, context(verify=False)) as pool:
                assert b"version" in await get(pool, b"GET", b"/api/version", None)

    run(main())


def test_verify_false_accepts_an_unknown_ca(run: Runner, certs: TlsCerts) -> None:
    async def main() -> None:
        async with OllamaSimulator(token_rate=None, ssl_context=server_context(certs)) as sim:
            for ssl_context in (
                context(verify=False),
                context(ca_file=certs.other_ca_file, verify=False),
            ):
                async with tls_pool(sim.endpoint, ssl_context) as pool:
                    assert b'"done":true' in await get(pool, b"POST", b"/api/chat", CHAT)

    run(main())


def test_client_certificate_when_the_node_requires_one(
    run: Runner, certs: TlsCerts, tmp_path: Path
) -> None:
    # A chain file that holds the key too: key_file may then be left out.
    combined = tmp_path / "client-combined.pem"
    combined.write_bytes(Path(certs.client_cert).read_bytes() + Path(certs.client_key).read_bytes())

    async def main() -> None:
        mutual = server_context(certs, require_client_cert=True)
        async with OllamaSimulator(token_rate=None, ssl_context=mutual) as sim:
            for with_cert in (
                context(
                    ca_file=certs.ca_file, cert_file=certs.client_cert, key_file=certs.client_key
                ),
                context(ca_file=certs.ca_file, cert_file=str(combined)),
            ):
                async with tls_pool(sim.endpoint, with_cert) as pool:
                    assert b"version" in await get(pool, b"GET", b"/api/version", None)
            # Without one the node refuses: in the handshake (TLS 1.2) or, with TLS 1.3,
            # right after it, before any response byte. Either way the node is unavailable.
            async with tls_pool(sim.endpoint, context(ca_file=certs.ca_file)) as pool:
                with pytest.raises(UpstreamUnavailable):
                    await pool.send(b"GET", b"/api/version", None)
            assert len(sim.requests) == 2

    run(main())


def test_plain_http_peer_fails_the_handshake(run: Runner) -> None:
    async def main() -> None:
        async with OllamaSimulator(token_rate=None) as sim:
            https = sim.endpoint.replace("http://", "https://")
            async with tls_pool(https, context(verify=False)) as pool:
                with pytest.raises(UpstreamUnavailable, match=r"TLS handshake .* failed"):
                    await pool.send(b"GET", b"/api/version", None)

    run(main())


def test_handshake_is_inside_the_connect_timeout(run: Runner) -> None:
    """A peer that accepts TCP but never answers the ClientHello: an UpstreamTimeout."""

    async def main() -> None:
        writers: list[asyncio.StreamWriter] = []

        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.append(writer)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async with tls_pool(
                f"https://127.0.0.1:{port}", context(verify=False), SHORT_CONNECT_TIMEOUT
            ) as pool:
                started = asyncio.get_running_loop().time()
                with pytest.raises(UpstreamTimeout):
                    await pool.send(b"GET", b"/api/version", None)
                assert asyncio.get_running_loop().time() - started < IO_TIMEOUT
        finally:
            for writer in writers:
                writer.close()
            server.close()
            await server.wait_closed()

    run(main())


def test_for_endpoint_schemes(run: Runner) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        options: dict[str, Any] = {
            "connect_timeout": 1.0,
            "io_timeout": 1.0,
            "max_idle": 1,
            "loop": loop,
        }
        # Without a context: exactly the old rules, https refused with the old words.
        with pytest.raises(ValueError, match="https is not supported"):
            UpstreamPool.for_endpoint("https://ollama:11434", **options)
        pool = UpstreamPool.for_endpoint("http://ollama", **options)
        assert (pool.host, pool.port, pool.ssl_context) == ("ollama", 80, None)
        tls = context(verify=False)
        with pytest.raises(ValueError, match="needs an https:// URL"):
            UpstreamPool.for_endpoint("http://ollama:11434", ssl_context=tls, **options)
        pool = UpstreamPool.for_endpoint("HTTPS://[::1]/", ssl_context=tls, **options)
        assert (pool.host, pool.port, pool.ssl_context) == ("::1", 443, tls)
        assert pool.stand_in(b"GET", b"/").headers[0] == (b"host", b"[::1]:443")

    run(main())


# -- parse_node_url ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://ollama", ("http", "ollama", 80)),
        ("https://ollama", ("https", "ollama", 443)),
        ("https://ollama/", ("https", "ollama", 443)),
        ("HTTPS://gpu-1.lab:8443", ("https", "gpu-1.lab", 8443)),
        ("http://10.0.0.7:11434/", ("http", "10.0.0.7", 11434)),
        ("https://[fe80::1]:11434", ("https", "fe80::1", 11434)),
        ("https://[::1]", ("https", "::1", 443)),
    ],
)
def test_parse_node_url_accepts(url: str, expected: tuple[str, str, int]) -> None:
    assert parse_node_url(url) == expected


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://ollama", "must start with http:// or https://"),
        ("ollama:11434", "must start with http:// or https://"),
        ("https//ollama", "must start with http:// or https://"),
        ("https://user:pw@ollama", "user info"),
        ("https://ollama/api", "a path is not allowed"),
        ("https://ollama?x=1", "query or fragment"),
        ("https://ollama#top", "query or fragment"),
        ("https://", "the host is empty"),
        ("https://:443", "the host is empty"),
        ("https://ollama:0", "port '0' is not a number from 1 to 65535"),
        ("https://ollama:99999", "is not a number from 1 to 65535"),
        ("https://ollama:https", "is not a number"),
        ("https://::1", "must be in brackets"),
        ("https://[nope]", "is not an IPv6 address"),
        ("https://[::1", "malformed [IPv6] host"),
        ("https://ol lama", "is not a host name"),
        (443, "expected an http:// or https:// URL string"),
    ],
)
def test_parse_node_url_refuses(url: Any, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parse_node_url(url)
    assert message in str(caught.value)


def test_parse_endpoint_is_unchanged() -> None:
    with pytest.raises(ValueError) as caught:
        parse_endpoint("https://ollama:11434")
    assert str(caught.value) == (
        "https is not supported: clawproxy speaks plain HTTP to Ollama, "
        "which must sit on a trusted network"
    )
    with pytest.raises(ValueError, match=r"^the URL must start with http://$"):
        parse_endpoint("ftp://ollama")
    assert parse_endpoint("http://[::1]:11434/") == ("::1", 11434)


@given(rest=st.text(alphabet="ab1:[]/@?#.-_ %\x00", max_size=16))
def test_node_urls_follow_the_endpoint_rules(rest: str) -> None:
    """For http, both parsers give the same answer or the same refusal, word for word."""
    url = "http://" + rest
    try:
        expected: Any = parse_endpoint(url)
    except ValueError as exc:
        with pytest.raises(ValueError) as caught:
            parse_node_url(url)
        assert str(caught.value) == str(exc)
        return
    assert parse_node_url(url) == ("http", *expected)
    scheme, host, port = parse_node_url("https://" + rest)
    assert (scheme, host) == ("https", expected[0])
    port_text = rest.partition("/")[0].rsplit("]", 1)[-1].partition(":")[2]
    assert port == (int(port_text) if port_text else 443)


# -- client_context ---------------------------------------------------------------------------


def test_client_context_defaults() -> None:
    strict = context()
    assert strict.verify_mode is ssl.CERT_REQUIRED and strict.check_hostname
    assert strict.minimum_version >= ssl.TLSVersion.TLSv1_2
    lab = context(verify=False)
    assert lab.verify_mode is ssl.CERT_NONE and not lab.check_hostname


def test_client_context_reports_bad_files(certs: TlsCerts, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    secret = "SECRET-CONTENT-MUST-NOT-LEAK"
    junk = tmp_path / "junk.pem"
    junk.write_text(f"not a certificate {secret}\n")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"ca_file": missing}, f"tls ca_file {missing!r} cannot be read"),
        ({"cert_file": missing}, f"tls cert_file {missing!r} cannot be read"),
        (
            {"cert_file": certs.client_cert, "key_file": missing},
            f"tls key_file {missing!r} cannot be read",
        ),
        ({"ca_file": str(tmp_path)}, "cannot be read"),
        ({"ca_file": str(junk)}, f"tls ca_file {str(junk)!r} holds no usable PEM certificate"),
        ({"cert_file": str(junk)}, "not a PEM certificate chain with its matching private key"),
        # A key that is not the certificate's.
        ({"cert_file": certs.client_cert, "key_file": certs.server_key}, "matching private key"),
        ({"key_file": certs.client_key}, "key_file is set but cert_file is not"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError) as caught:
            context(**kwargs)
        assert message in str(caught.value), (kwargs, str(caught.value))
        assert secret not in str(caught.value)


def test_client_context_refuses_an_encrypted_key_without_prompting(
    certs: TlsCerts, tmp_path: Path
) -> None:
    encrypted = tmp_path / "encrypted.key"
    command = [OPENSSL, "pkey", "-in", certs.client_key, "-out", str(encrypted)]
    subprocess.run(
        [*command, "-aes256", "-passout", "pass:secret"],
        check=True,
        capture_output=True,
        timeout=30,
    )
    with pytest.raises(ValueError, match="is encrypted"):
        context(cert_file=certs.client_cert, key_file=str(encrypted))
