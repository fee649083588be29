"""The chunked decoder alone: every split of a valid body decodes the same; bad framing fails."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from clawproxy.http.chunked import ChunkedDecoder, ChunkedError


def encode(chunks: list[bytes], trailer: bytes = b"") -> bytes:
    body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks if c)
    return body + b"0\r\n" + trailer + b"\r\n"


def decode(reads: list[bytes]) -> tuple[bytes, ChunkedDecoder]:
    decoder = ChunkedDecoder()
    out = b"".join(decoder.feed(r) for r in reads)
    return out, decoder


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for p in [*points, len(data)]:
        pieces.append(data[last:p])
        last = p
    return pieces


def test_one_chunk_per_read_fast_path() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"5\r\nhello\r\n") == b"hello"
    assert decoder.feed(b"1a\r\n" + b"x" * 26 + b"\r\n") == b"x" * 26
    assert not decoder.done
    assert decoder.feed(b"0\r\n\r\n") == b""
    assert decoder.done and decoder.extra == 0


@settings(max_examples=300)
@given(
    chunks=st.lists(st.binary(min_size=0, max_size=40), max_size=8),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=12),
    trailer=st.sampled_from([b"", b"X-T: 1\r\n"]),
)
def test_any_split_decodes_identically(
    chunks: list[bytes], cuts: list[int], trailer: bytes
) -> None:
    wire = encode(chunks, trailer)
    out, decoder = decode(split_at(wire, cuts))
    assert out == b"".join(chunks)
    assert decoder.done
    assert decoder.extra == 0


def test_byte_by_byte_and_extension() -> None:
    wire = b"5;name=value\r\nhello\r\n0\r\n\r\n"
    out, decoder = decode([wire[i : i + 1] for i in range(len(wire))])
    assert out == b"hello" and decoder.done


def test_a_runaway_chunk_fails_at_its_first_extra_byte() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"3\r\nabc") == b"abc"
    with pytest.raises(ChunkedError):
        decoder.feed(b"X")


def test_bytes_after_the_end_are_counted() -> None:
    out, decoder = decode([encode([b"abc"]) + b"junk"])
    assert out == b"abc" and decoder.done and decoder.extra == 4


@pytest.mark.parametrize(
    "wire",
    [
        b"5\nhello\r\n",  # bare LF after the size
        b"5\r\nhelloXX0\r\n\r\n",  # CVE-2025-43859 form: wrong bytes after the data
        b"0x5\r\nhello\r\n",
        b" 5\r\nhello\r\n",
        b"-5\r\nhello\r\n",
        b"5_0\r\n",
        b"fffffffffffffffff\r\n",  # 17 hex digits
        b"\r\nhello\r\n",  # empty size
        b"z\r\n",
        b"5" * 5000,  # endless size line
    ],
)
def test_malformed_framing_is_an_error(wire: bytes) -> None:
    with pytest.raises(ChunkedError):
        decode([wire])
    with pytest.raises(ChunkedError):
        decode([wire[i : i + 1] for i in range(len(wire))])


@settings(max_examples=300)
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=400), max_size=6))
def test_arbitrary_bytes_decode_or_fail_cleanly(data: bytes, cuts: list[int]) -> None:
    try:
        out, _ = decode(split_at(data, cuts))
    except ChunkedError:
        return
    assert isinstance(out, bytes)
