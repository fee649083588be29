"""Sans-IO reading of one streamed HTTP/1.1 response, for the load generator.

Theory of operation: ``ResponseReader.feed(data)`` takes raw socket bytes and returns the
body bytes they complete (chunked framing removed), so the caller never sees framing and
never needs an HTTP library. The head is parsed once (status and framing only); the body is
chunked (decoded by ``clawproxy.chunked``, the gateway's own strict decoder), or
Content-Length for error replies. ``TokenScanner.feed(body)`` splits body bytes
into lines and counts tokens, keeping the partial last line for the next read, so tokens
are counted the same however the bytes were cut on the way.

Token counting, per format (the numbered simulator script sends " t0001", " t0002", ...):

* NDJSON (Ollama, direct or through nginx): a line ``{"model":..,"message":{"role":
  "assistant","content":" t0001"},"done":false}``; the end is the line with ``"done":true``.
* SSE (through the gateway): an event line ``data: {..."delta":{"content":" t0001"},...}``;
  the end is ``data: [DONE]``.

Both carry the token as the JSON member ``"content":" tNNNN"``, which nothing else in
either stream contains (role and done chunks have empty content), so one pattern counts
both formats; the number also proves the order (a gap or a repeat is counted). Nothing here
knows about sockets or clocks: the tests feed it whole responses and byte by byte.
"""

from __future__ import annotations

import re

from clawproxy.http.chunked import ChunkedDecoder, ChunkedError

# A response head larger than this is not from any server we benchmark.
MAX_HEAD_BYTES = 64 * 1024

TOKEN = re.compile(rb'"content":" t(\d+)"')
NDJSON_END = b'"done":true'
SSE_END = b"data: [DONE]"

_HEAD, _CHUNKED, _LENGTH = range(3)


class WireError(ValueError):
    """The response broke HTTP/1.1 framing."""


class ResponseReader:
    """Feed raw bytes, get body bytes. ``status`` is set once the head arrived; ``done``
    once the body ended (last chunk and trailers, or Content-Length bytes)."""

    __slots__ = ("_buf", "_chunks", "_need", "_state", "chunked", "done", "status")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = _HEAD
        self._need = 0
        self._chunks: ChunkedDecoder | None = None
        self.status = 0
        self.chunked = False
        self.done = False

    def feed(self, data: bytes) -> bytes:
        """The body bytes completed by ``data`` (possibly ``b""``)."""
        if self._state == _HEAD:
            self._buf += data
            end = self._buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buf) > MAX_HEAD_BYTES:
                    raise WireError("response head too large")
                return b""
            self._head(bytes(self._buf[:end]))
            data = bytes(self._buf[end + 4 :])
            self._buf.clear()
        if self._state == _LENGTH:
            return self._length_body(data)
        return self._chunked_body(data)

    def _head(self, head: bytes) -> None:
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ", 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise WireError(f"bad status line {lines[0][:80]!r}")
        self.status = int(parts[1])
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding" and value.strip().lower() == b"chunked":
                self.chunked = True
            elif name == b"content-length":
                length = int(value.strip())
        if self.chunked:
            # The gateway's own strict decoder: one find and one slice for the usual read.
            self._chunks = ChunkedDecoder()
            self._state = _CHUNKED
        elif length is not None:
            self._state = _LENGTH
            self._need = length
            self.done = length == 0
        else:
            raise WireError("neither chunked nor Content-Length: cannot find the end")

    def _length_body(self, data: bytes) -> bytes:
        if len(data) > self._need:
            raise WireError("bytes after the end of the body")
        self._need -= len(data)
        self.done = self._need == 0
        return data

    def _chunked_body(self, data: bytes) -> bytes:
        chunks = self._chunks
        assert chunks is not None
        try:
            body = chunks.feed(data)
        except ChunkedError as exc:
            raise WireError(str(exc)) from None
        if chunks.extra:
            raise WireError("bytes after the end of the body")
        self.done = chunks.done
        return body


class TokenScanner:
    """Counts numbered tokens in body bytes, in order, and notices the stream's end line."""

    __slots__ = ("_end", "_partial", "ended", "expected_next", "out_of_order", "tokens")

    def __init__(self, end_marker: bytes) -> None:
        self._end = end_marker
        self._partial = b""
        self.tokens = 0
        self.expected_next = 1
        self.out_of_order = 0
        self.ended = False

    def feed(self, body: bytes) -> int:
        """Scan ``body``; return how many tokens its completed lines carried."""
        if self._partial:
            body = self._partial + body
        lines = body.split(b"\n")
        self._partial = lines.pop()
        found = 0
        search = TOKEN.search
        for line in lines:
            m = search(line)
            if m is not None:
                number = int(m.group(1))
                if number != self.expected_next:
                    self.out_of_order += 1
                self.expected_next = number + 1
                found += 1
            elif self._end in line:
                self.ended = True
        self.tokens += found
        return found
