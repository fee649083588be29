"""The one-token shortcut: a raw chunked read re-framed without decoding it first.

``SseReframer.feed_chunk`` takes a read that is exactly one HTTP chunk holding one
content-only line and declines everything else, which then goes through
``ChunkedDecoder.feed`` and ``SseReframer.feed`` as before. The property: with or without
the shortcut, any stream cut into any reads gives the same bytes, the same counts and the
same failures; and reads that are one chunk each really take the shortcut.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from sse_helpers import chat_line, cut, done_line, line_st, new, parse_sse

from clawproxy.http.chunked import ChunkedDecoder, ChunkedError


def frame(payload: bytes, size: int | None = None) -> bytes:
    return b"%x\r\n%b\r\n" % (len(payload) if size is None else size, payload)


def relay(reads: list[bytes], shortcut: bool) -> tuple[bytes, int, str | None, int]:
    """What the upstream connection and the relay do with each read; also how many reads
    took the shortcut, and the decoder's error if it raised one."""
    decoder = ChunkedDecoder()
    reframer = new(include_usage=True, max_line_bytes=400)
    out: list[bytes] = []
    taken = 0
    for read in reads:
        if shortcut and decoder.at_boundary:
            sse = reframer.feed_chunk(read)
            if sse is not None:
                out.append(sse)
                taken += 1
                continue
        try:
            payload = decoder.feed(read)
        except ChunkedError as exc:
            return b"".join(out), reframer.deltas, f"chunked: {exc}", taken
        if payload:
            out.append(reframer.feed(payload))
    out.append(reframer.eof())
    return b"".join(out), reframer.deltas, reframer.error, taken


@settings(max_examples=300, deadline=None)
@given(
    lines=st.lists(line_st, max_size=8),
    aligned=st.booleans(),
    points=st.lists(st.integers(0, 10_000), max_size=10),
    bad_size=st.one_of(st.none(), st.integers(0, 7)),
)
def test_the_shortcut_changes_nothing_but_the_cost(
    lines: list[bytes], aligned: bool, points: list[int], bad_size: int | None
) -> None:
    chunks = [frame(line) for line in [*lines, done_line(prompt_eval_count=2, eval_count=1)]]
    if bad_size is not None and bad_size < len(chunks):
        # A size that lies about its data: both ways must fail alike.
        line = lines[bad_size] if bad_size < len(lines) else done_line()
        chunks[bad_size] = frame(line, size=len(line) + 1)
    body = b"".join(chunks) + b"0\r\n\r\n"
    reads = [*chunks, b"0\r\n\r\n"] if aligned else cut(body, points)
    with_shortcut = relay(reads, shortcut=True)
    without = relay(reads, shortcut=False)
    assert with_shortcut[:3] == without[:3]
    if with_shortcut[2] is None:
        parse_sse(with_shortcut[0])  # well-formed SSE either way


def test_one_chunk_reads_take_the_shortcut_and_others_do_not() -> None:
    tokens = [chat_line(" a"), chat_line(" b"), chat_line("", thinking="hm")]
    reads = [frame(line) for line in tokens] + [frame(done_line()), b"0\r\n\r\n"]
    sse, deltas, error, taken = relay(reads, shortcut=True)
    assert error is None and deltas == 3
    # The three token lines are one chunk each (the first behind the role chunk); the
    # done line and the last chunk are declined.
    assert taken == 3
    events = parse_sse(sse)
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[1]["choices"][0]["delta"] == {"content": " a"}
    assert events[-1] == "[DONE]"
    # Two chunks in one read, or a chunk cut in two, are declined too.
    assert relay([b"".join(reads[:2]), *reads[2:]], shortcut=True)[3] == 1
    half = len(reads[1]) // 2
    split = [reads[0], reads[1][:half], reads[1][half:], *reads[2:]]
    assert relay(split, shortcut=True)[3] == 2
    # A first line cut in two leaves a partial line buffered: the next chunk is declined.
    first_half = [reads[0][:9], reads[0][9:], *reads[1:]]
    assert relay(first_half, shortcut=True)[3] == 2


def test_the_first_token_alone_takes_the_shortcut_behind_the_role_chunk() -> None:
    reframer = new()
    out = reframer.feed_chunk(frame(chat_line("hi")))
    assert out is not None and reframer.deltas == 1
    events = parse_sse(out)
    assert [e["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": ""},
        {"content": "hi"},
    ]
    # An empty first token still opens the stream with the role chunk, and only once.
    reframer = new()
    assert parse_sse(reframer.feed_chunk(frame(chat_line(""))) or b"") == [parse_sse(out)[0]]
    assert parse_sse(reframer.feed_chunk(frame(chat_line("x"))) or b"")[0]["choices"][0][
        "delta"
    ] == {"content": "x"}


def test_a_size_line_that_is_not_hex_is_declined() -> None:
    reframer = new()
    reframer.feed(chat_line("x"))
    line = chat_line(" y")
    assert reframer.feed_chunk(frame(line)) is not None
    for bad in (b"0x%x" % len(line), b" %x" % len(line), b"%X;ext" % len(line)):
        assert reframer.feed_chunk(bad + b"\r\n" + line + b"\r\n") is None
