"""Sans-IO reading of one streamed HTTP/1.1 response, for the load generator.

Theory of operation: ``ResponseReader.feed(data)`` takes raw socket bytes and returns the
body bytes they complete (chunked framing removed), so the caller never sees framing and
never needs an HTTP library. The head is parsed once (status and framing only); the body is
chunked, or Content-Length for error replies. ``TokenScanner.feed(body)`` splits body bytes
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

# A response head larger than this is not from any server we benchmark.
MAX_HEAD_BYTES = 64 * 1024
# Chunk-size lines and trailers are a few bytes; cap them so garbage cannot grow memory.
MAX_LINE_BYTES = 4 * 1024
# Hex digits of a chunk size the fast path parses (16 is already beyond any stream).
MAX_HEX_DIGITS = 16

TOKEN = re.compile(rb'"content":" t(\d+)"')
NDJSON_END = b'"done":true'
SSE_END = b"data: [DONE]"

_HEAD, _SIZE, _DATA, _DATA_END, _TRAILER, _LENGTH, _DONE = range(7)


class WireError(ValueError):
    """The response broke HTTP/1.1 framing."""


class ResponseReader:
    """Feed raw bytes, get body bytes. ``status`` is set once the head arrived; ``done``
    once the body ended (last chunk and trailers, or Content-Length bytes)."""

    __slots__ = ("_buf", "_need", "_state", "chunked", "done", "status")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._state = _HEAD
        self._need = 0
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
            self._state = _SIZE
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
        # Servers that stream write one chunk per token, so a read is usually exactly one
        # whole chunk: take it with one find and one slice, no state machine.
        if self._state == _SIZE and not self._buf:
            end = data.find(b"\r\n")
            if 0 < end <= MAX_HEX_DIGITS:
                try:
                    chunk_size = int(data[:end], 16)
                except ValueError:
                    chunk_size = 0
                stop = end + 2 + chunk_size
                if chunk_size and len(data) == stop + 2 and data.endswith(b"\r\n"):
                    return data[end + 2 : stop]
        out: list[bytes] = []
        pos = 0
        size = len(data)
        while pos < size:
            state = self._state
            if state == _DATA:
                take = min(self._need, size - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._need -= take
                if self._need == 0:
                    self._state = _DATA_END
                    self._need = 2
            elif state == _DATA_END:
                take = min(self._need, size - pos)
                if data[pos : pos + take] != b"\r\n"[2 - self._need : 2 - self._need + take]:
                    raise WireError("chunk data not followed by CRLF")
                pos += take
                self._need -= take
                if self._need == 0:
                    self._state = _SIZE
            elif state in (_SIZE, _TRAILER):
                line, pos = self._line(data, pos)
                if line is None:
                    break
                if state == _TRAILER:
                    if not line:
                        self._state = _DONE
                        self.done = True
                    continue
                try:
                    chunk_size = int(line.split(b";", 1)[0], 16)
                except ValueError:
                    raise WireError(f"bad chunk size line {line[:40]!r}") from None
                if chunk_size == 0:
                    self._state = _TRAILER
                else:
                    self._state = _DATA
                    self._need = chunk_size
            else:
                raise WireError("bytes after the end of the body")
        return b"".join(out)

    def _line(self, data: bytes, pos: int) -> tuple[bytes | None, int]:
        """One CRLF-terminated line from the buffer plus ``data[pos:]``, or ``None``."""
        buf = self._buf
        if buf:
            buf += data[pos:]
            end = buf.find(b"\r\n")
            if end < 0:
                self._keep_partial()
                return None, len(data)
            line = bytes(buf[:end])
            rest = len(buf) - end - 2
            buf.clear()
            return line, len(data) - rest
        end = data.find(b"\r\n", pos)
        if end < 0:
            buf += data[pos:]
            self._keep_partial()
            return None, len(data)
        return data[pos:end], end + 2

    def _keep_partial(self) -> None:
        if len(self._buf) > MAX_LINE_BYTES:
            raise WireError("chunk size or trailer line too long")


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
