"""Micro-benchmark: decoding Ollama's chunked body with h11 vs ``clawproxy.chunked``.

Both decode the same reads (one NDJSON line per chunk, as Ollama flushes) in the same run,
alternating, best of several rounds; prints microseconds per chunk for each.

    .venv/bin/python bench/chunked_micro.py [--chunks N] [--rounds R]
"""

from __future__ import annotations

import argparse
import time

import h11

from clawproxy.http.chunked import ChunkedDecoder

LINE = (
    b'{"model":"qwen3:32b","created_at":"2026-08-21T18:48:22.184789Z",'
    b'"message":{"role":"assistant","content":" hello"},"done":false}\n'
)
CHUNK = b"%x\r\n%s\r\n" % (len(LINE), LINE)


def with_h11(n: int) -> float:
    conn = h11.Connection(h11.CLIENT)
    conn.send(h11.Request(method="POST", target="/api/chat", headers=[("Host", "x")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    conn.next_event()
    start = time.perf_counter()
    for _ in range(n):
        conn.receive_data(CHUNK)
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                break
    return time.perf_counter() - start


def with_decoder(n: int) -> float:
    decoder = ChunkedDecoder()
    feed = decoder.feed
    start = time.perf_counter()
    for _ in range(n):
        feed(CHUNK)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--chunks", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    best = {"h11": float("inf"), "clawproxy.chunked": float("inf")}
    for _ in range(args.rounds):
        best["h11"] = min(best["h11"], with_h11(args.chunks))
        best["clawproxy.chunked"] = min(best["clawproxy.chunked"], with_decoder(args.chunks))
    for name, seconds in best.items():
        print(f"{name:>18}: {seconds / args.chunks * 1e6:6.2f} us per chunk")


if __name__ == "__main__":
    main()
