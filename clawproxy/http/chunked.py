"""An incremental decoder for HTTP/1.1 chunked bodies: the upstream hot path without h11.

Theory of operation
-------------------
h11 parses Ollama's response head; once the head says ``Transfer-Encoding: chunked``, the
body bytes go through ``ChunkedDecoder.feed()`` instead of h11's event machinery. Ollama
flushes one NDJSON line per chunk, so most reads hold exactly one whole chunk, and that case
costs one ``find``, one ``int(..., 16)`` and one slice: no event objects, no state-machine
dispatch per token. Everything else (a chunk split across reads, many chunks in one read,
the last chunk and trailers) takes the general loop, which keeps a small bounded buffer
for an incomplete size line or CRLF and never re-scans payload bytes.

The decoder is strict where smuggling and desync bugs live (RELIABILITY 1.2): the size is
hex digits only (an optional ``;extension`` is skipped), at most ``MAX_SIZE_DIGITS`` of
them, every line ends in CRLF (a bare LF is an error), and the CRLF after a chunk's data
must be exactly that. Errors raise ``ChunkedError``; the caller closes the connection.
"""

from __future__ import annotations

import re

# 16 hex digits already allow 16 EiB; h11 and Go accept about this many.
MAX_SIZE_DIGITS = 16
# A size line (with any extension) or trailer line longer than this is not Ollama.
MAX_LINE_BYTES = 4096
_HEX = frozenset(b"0123456789abcdefABCDEF")

# Parser states.
_SIZE = 0  # reading a chunk-size line
_DATA = 1  # reading chunk data, ``_left`` bytes to go
_DATA_END = 2  # expecting the CRLF after chunk data, ``_left`` bytes of it to go
_TRAILER = 3  # after the last chunk: trailer lines until an empty one
_DONE = 4


def one_chunk_pattern(payload: bytes) -> re.Pattern[bytes]:
    """A pattern for a read that is exactly one whole chunk whose data matches ``payload``.

    For ``fullmatch`` on a read taken at a chunk boundary (``ChunkedDecoder.at_boundary``).
    Group 1 is the size, group 2 the data; ``payload``'s own groups follow. A match says
    only the shape: the caller must also check ``chunk_fits(match)``, since a regex cannot
    compare the size with the data's length. What matches is exactly what ``feed()`` would
    decode from that read, with the same strictness (hex digits only, CRLF after both).
    """
    return re.compile(rb"([0-9a-fA-F]{1,%d})\r\n(" % MAX_SIZE_DIGITS + payload + rb")\r\n")


def chunk_fits(match: re.Match[bytes]) -> bool:
    """Whether a ``one_chunk_pattern`` match's declared size is its data's length."""
    return int(match[1], 16) == match.end(2) - match.start(2)


class ChunkedError(ValueError):
    """The upstream sent a malformed chunked body."""


class ChunkedDecoder:
    """Feed raw body bytes, get the payload bytes back; ``done`` after the last chunk."""

    __slots__ = ("_left", "_pending", "_state", "at_boundary", "done", "extra")

    def __init__(self) -> None:
        self._state = _SIZE
        self._left = 0
        # Bytes of an unfinished size or trailer line.
        self._pending = b""
        self.done = False
        # Bytes that arrived after the end of the body (the connection must not be reused).
        self.extra = 0
        # Between chunks with nothing buffered: the next read starts with a size line
        # (the state is _SIZE and _pending is empty; _feed keeps this in step).
        self.at_boundary = True

    def feed(self, data: bytes) -> bytes:
        """Decode one read; returns the payload bytes it completed (possibly ``b""``)."""
        if self.at_boundary:
            # The common read: exactly one whole chunk, nothing buffered.
            end = data.find(b"\r\n")
            if 0 < end <= MAX_SIZE_DIGITS:
                head = data[:end]
                # int(x, 16) alone would also take "0x", "_" and spaces: check the digits.
                if _HEX.issuperset(head):
                    size = int(head, 16)
                    if size and len(data) == end + 4 + size and data.endswith(b"\r\n"):
                        return data[end + 2 : -2]
        return self._feed(data)

    def _feed(self, data: bytes) -> bytes:
        if self._pending:
            # Rare: the previous read ended inside a size or trailer line.
            data = self._pending + data
            self._pending = b""
        out: list[bytes] = []
        pos = 0
        n = len(data)
        while pos < n:
            state = self._state
            if state == _DATA:
                take = min(self._left, n - pos)
                out.append(data[pos : pos + take])
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _DATA_END
                    self._left = 2
            elif state == _DATA_END:
                # Exactly CRLF after the data, checked byte by byte as it arrives, so a
                # chunk longer than declared fails at its first extra byte.
                take = min(self._left, n - pos)
                done = 2 - self._left
                if data[pos : pos + take] != b"\r\n"[done : done + take]:
                    raise ChunkedError("chunk data longer than its declared size")
                pos += take
                self._left -= take
                if not self._left:
                    self._state = _SIZE
            elif state == _DONE:
                self.extra += n - pos
                break
            else:
                line, pos = self._take_line(data, pos)
                if line is None:
                    break
                self._on_line(line)
        self.at_boundary = self._state == _SIZE and not self._pending
        return b"".join(out)

    def _take_line(self, data: bytes, pos: int) -> tuple[bytes | None, int]:
        """One CRLF-terminated line starting at ``pos``, or None when more data is needed."""
        end = data.find(b"\r\n", pos)
        if end < 0:
            rest = data[pos:]
            if b"\n" in rest:
                raise ChunkedError("bare LF in a chunked body")
            # A lone CR may be the first half of a CRLF split across reads.
            if len(rest) > MAX_LINE_BYTES:
                raise ChunkedError("chunk size or trailer line too long")
            self._pending = rest
            return None, len(data)
        line = data[pos:end]
        if b"\n" in line or b"\r" in line:
            raise ChunkedError("bare CR or LF in a chunked body")
        if len(line) > MAX_LINE_BYTES:
            raise ChunkedError("chunk size or trailer line too long")
        return line, end + 2

    def _on_line(self, line: bytes) -> None:
        if self._state == _SIZE:
            size = self._parse_size(line.split(b";", 1)[0])
            if size:
                self._left = size
                self._state = _DATA
            else:
                self._state = _TRAILER
        elif line:  # _TRAILER: trailer fields are ignored (Ollama sends none)
            return
        else:
            self._state = _DONE
            self.done = True

    @staticmethod
    def _parse_size(text: bytes) -> int:
        if not text or len(text) > MAX_SIZE_DIGITS or not _HEX.issuperset(text):
            raise ChunkedError("invalid chunk size")
        return int(text, 16)
