"""Micro-benchmark: tokens per second through ``SseReframer.feed()``.

Each scenario builds an Ollama ``/api/chat`` NDJSON stream in memory (lines as Go writes
them), cuts it into reads of 1 or 10 lines, and times feeding every read to a fresh
re-framer. Next to it runs a naive reference in the same process (split lines, ``orjson``
decode, build the chunk dict, ``orjson`` encode), so the speed-up is measured side by side
on the same machine. The number reported is the best of ``--repeat`` runs.

Scenarios: short (~4 byte) and long (~60 byte) tokens, plain text and text with JSON
escapes (both take the fast path), text with escaped quotes, CJK, and thinking lines
(which take the general path).

    python bench/reframe_micro.py            # ~20 s
    python bench/reframe_micro.py --quick    # well under a second, for smoke tests
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clawproxy.openai.reframe import SseReframer

LINE_HEAD = b'{"model":"qwen3:8b","created_at":"2026-08-21T18:48:22.184789Z","message":'

TOKENS: dict[str, list[str]] = {
    "short plain": ["The ", "cat ", "sat ", "on ", "a ", "mat."],
    "short escaped": ["a\nb", "<i>", "x&y", "\t1\n"],
    "short quoted": ['"hi"', 'a"b', '\\"x'],
    "short cjk": ["你好", "世界", "🙂ok"],
    "long plain": ["The quick brown fox jumps over the lazy dog and keeps going!! "],
    "long escaped": ["if (a < b && c > d) {\n\treturn x;\n}\n// done with <tags> here..."],
    "long quoted": ['print("hello, world") and then print("goodbye, world") ok.'],
    "short thinking": ["Hmm ", "let ", "me ", "see"],
}


def go_string(text: str) -> bytes:
    """A JSON string as Go writes it: <>& and U+2028/9 escaped (orjson leaves them raw)."""
    raw = orjson.dumps(text)
    for char, esc in ((b"<", b"\\u003c"), (b">", b"\\u003e"), (b"&", b"\\u0026")):
        raw = raw.replace(char, esc)
    return raw.replace("\u2028".encode(), b"\\u2028").replace("\u2029".encode(), b"\\u2029")


def build_stream(kind: str, count: int) -> list[bytes]:
    words = TOKENS[kind]
    thinking = kind.endswith("thinking")
    lines = []
    for i in range(count):
        token = go_string(words[i % len(words)])
        if thinking:
            msg = b'{"role":"assistant","content":"","thinking":' + token + b"}"
        else:
            msg = b'{"role":"assistant","content":' + token + b"}"
        lines.append(LINE_HEAD + msg + b',"done":false}\n')
    return lines


def chunk(lines: list[bytes], per_read: int) -> list[bytes]:
    return [b"".join(lines[i : i + per_read]) for i in range(0, len(lines), per_read)]


def run_reframer(reads: list[bytes]) -> int:
    r = SseReframer(completion_id="chatcmpl-bench", created=1, model="qwen3:8b", include_usage=True)
    feed = r.feed
    size = 0
    for data in reads:
        size += len(feed(data))
    return size


def run_naive(reads: list[bytes]) -> int:
    """The obvious implementation: decode every line, build the chunk, encode it."""
    buf = b""
    size = 0
    for data in reads:
        *lines, buf = (buf + data).split(b"\n")
        out = []
        for line in lines:
            msg = orjson.loads(line)["message"]
            delta = {}
            if msg.get("thinking"):
                delta["reasoning_content"] = msg["thinking"]
            if msg.get("content"):
                delta["content"] = msg["content"]
            body = {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 1,
                "model": "qwen3:8b",
                "choices": [{"index": 0, "delta": delta, "finish_reason": None}],
            }
            out.append(b"data: " + orjson.dumps(body) + b"\n\n")
        size += len(b"".join(out))
    return size


def best_rates(
    fns: list[Callable[[list[bytes]], int]], reads: list[bytes], tokens: int, rep: int
) -> list[float]:
    """Tokens/s of each function, best of ``rep`` runs, interleaved so noise hits all alike."""
    best = [float("inf")] * len(fns)
    for _ in range(rep):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            fn(reads)
            best[i] = min(best[i], time.perf_counter() - t0)
    return [tokens / t for t in best]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=20_000, help="tokens per run")
    parser.add_argument("--repeat", type=int, default=15, help="runs per scenario, best kept")
    parser.add_argument("--quick", action="store_true", help="tiny run for smoke tests")
    args = parser.parse_args()
    if args.quick:
        args.tokens, args.repeat = 500, 1
    print(f"python {sys.version.split()[0]}, {args.tokens} tokens/scenario, best of {args.repeat}")
    print(f"{'scenario':16s} {'lines/read':>10s} {'reframer tok/s':>15s} {'naive tok/s':>12s}  x")
    for kind in TOKENS:
        lines = build_stream(kind, args.tokens)
        for per_read in (1, 10):
            reads = chunk(lines, per_read)
            fast, naive = best_rates([run_reframer, run_naive], reads, args.tokens, args.repeat)
            print(f"{kind:16s} {per_read:10d} {fast:15,.0f} {naive:12,.0f} {fast / naive:4.1f}")


if __name__ == "__main__":
    main()
