"""Server-side h11 parsers, built ahead between requests for new connections."""

from __future__ import annotations

import h11

# Parsers kept built ahead for new connections (see ParserStock): a burst of new
# connections beyond this builds its own, as before.
SPARE_PARSERS = 8


class ParserStock:
    """Server-side h11 parsers, built ahead between requests.

    A new connection needs one for its first bytes; building it (h11's connection state,
    receive buffer and readers) is tens of microseconds on a cold CPU, on the way to the
    first token. Each connection refills the stock after a request instead (``_run``)."""

    def __init__(self, max_header_bytes: int, keep: int = SPARE_PARSERS) -> None:
        self._max_header_bytes = max_header_bytes
        self._keep = keep
        self._spare: list[h11.Connection] = []

    def take(self) -> h11.Connection:
        spare = self._spare
        return spare.pop() if spare else self._build()

    def refill(self) -> None:
        if len(self._spare) < self._keep:
            self._spare.append(self._build())

    def _build(self) -> h11.Connection:
        return h11.Connection(h11.SERVER, max_incomplete_event_size=self._max_header_bytes)
