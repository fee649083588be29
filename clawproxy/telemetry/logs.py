"""Logging set-up and the access line.

One access line per request: time, client, method, path, status, model, time to first
token, duration, tokens, outcome. Never the prompt, never a header value (API keys travel
in headers), never the query string. Paths are escaped so a client cannot forge log lines
with CR/LF or terminal escapes.

A request refused before any handler ran (bad framing, a deadline, a limit, too many
connections) gets the same line, with what is not known as ``-`` and the refusal's reason
as its outcome (``refusal_line``). Refusals are what a flood produces, so their lines are
bounded: at most ``REFUSAL_LINES_PER_S`` in a second (``LineBudget``), then one warning
with the count of those left out (``RefusalLog``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import sys
import time
import typing

from clawproxy.config import LoggingConfig

ACCESS = logging.getLogger("clawproxy.access")
_NO_LOCK = contextlib.nullcontext()
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"

# Printable ASCII stays; every other byte becomes \xNN (log injection, CVE-2020-7694 class).
_SAFE = {c: chr(c) for c in range(0x20, 0x7F)}
_PRINTABLE = re.compile(rb"[\x20-\x7e]*").fullmatch


def escape_path(path: bytes, limit: int = 200) -> str:
    cut = path[:limit]
    if _PRINTABLE(cut):
        # The usual path: nothing to escape, one regex call instead of a call per byte.
        text = cut.decode("ascii")
    else:
        text = "".join(_SAFE.get(c) or f"\\x{c:02x}" for c in cut)
    return text + ("..." if len(path) > limit else "")


class _Direct:
    """The handler ``setup_logging`` installed, which access lines may bypass logging for."""

    handler: logging.StreamHandler[typing.Any] | None = None
    second = -1
    stamp = ""


def access_enabled() -> bool:
    return ACCESS.isEnabledFor(logging.INFO)


def log_access(line: str) -> None:
    """Write one access line, formatted exactly as ``FORMAT`` would.

    When the handler is the one ``setup_logging`` made, the line goes straight to its
    stream: building a LogRecord and running it through logging cost five times the
    write itself, once per request. Anywhere else (tests, an embedding application) it
    goes through logging as usual.
    """
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    handler = _Direct.handler
    if handler is None:
        ACCESS.info(line)
        return
    now = time.time()
    second = int(now)
    if second != _Direct.second:
        # logging's default asctime, rendered once a second.
        _Direct.stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
        _Direct.second = second
    text = f"{_Direct.stamp},{int((now - second) * 1000):03d} INFO {ACCESS.name}: {line}\n"
    with handler.lock or _NO_LOCK:
        try:
            handler.stream.write(text)
            handler.stream.flush()
        except (OSError, ValueError):
            # A full disk or a closed stream must not fail the request; logging itself
            # would print a traceback per line here.
            pass


def setup_logging(cfg: LoggingConfig) -> logging.Handler:
    """Route the ``clawproxy`` loggers to stderr or ``logging.file``; return the handler."""
    handler: logging.StreamHandler[typing.Any]
    if cfg.file:
        handler = logging.FileHandler(cfg.file, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(FORMAT))
    root = logging.getLogger("clawproxy")
    for old in list(root.handlers):
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(cfg.level.upper())
    root.propagate = False
    _Direct.handler = handler
    return handler


def reopen_log_files() -> bool:
    """Reopen the ``clawproxy`` log file under its configured name (SIGHUP, logrotate).

    Returns False when logging goes to stderr. Raises OSError if the file cannot be
    opened; the old stream is then kept, so no line is lost.
    """
    reopened = False
    for handler in logging.getLogger("clawproxy").handlers:
        if isinstance(handler, logging.FileHandler):
            # Opened as FileHandler opens it (mode "a" unless configured otherwise).
            stream = open(handler.baseFilename, handler.mode, encoding=handler.encoding)  # noqa: SIM115
            old = handler.setStream(stream)  # type: ignore[arg-type]
            if old is not None:
                old.close()
            reopened = True
    return reopened


def access_line(
    client: str,
    method: bytes,
    path: bytes,
    status: int,
    model: str,
    ttft: float | None,
    duration: float,
    tokens: int,
    outcome: str,
    key: str = "-",
    node: str = "-",
    rid: str = "-",
) -> str:
    ttft_ms = f"{ttft * 1000:.1f}" if ttft is not None else "-"
    return (
        f'{client} "{escape_path(method)} {escape_path(path)}" {status} model={model} '
        f"ttft_ms={ttft_ms} duration_ms={duration * 1000:.1f} tokens={tokens} "
        f"outcome={outcome or 'ok'} key={key} node={node} rid={rid}"
    )


def refusal_line(client: str, method: bytes, path: bytes, status: int, reason: str) -> str:
    """The access line of a request refused before a handler ran: the fields of
    ``access_line``, ``-`` for what is not known (method and path when the head was never
    parsed; model, times, key and request id always), the reason as the outcome."""
    return (
        f'{client} "{escape_path(method) or "-"} {escape_path(path) or "-"}" {status} model=- '
        f"ttft_ms=- duration_ms=- tokens=0 outcome={reason} key=- node=- rid=-"
    )


# Refusal lines written in one second at most. Past it, a flood costs one summary line a
# second: 11 lines of ~120 bytes, ~1.3 KB/s, bounded further by the contrib logrotate.
REFUSAL_LINES_PER_S = 10


class LineBudget:
    """At most ``per_second`` lines in each one-second window (a window opens at the first
    line after the last one closed); the rest are counted, to be told in one line later.
    Pure: the caller passes the time."""

    __slots__ = ("_used", "per_second", "suppressed", "window_end")

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self.window_end = float("-inf")
        self._used = 0
        # Lines held back and not yet told.
        self.suppressed = 0

    def take(self, now: float) -> tuple[bool, int]:
        """(whether to write a line now, how many were held back in the window that just
        closed: tell those first)."""
        told = 0
        if now >= self.window_end:
            told = self.settle()
            self.window_end = now + 1.0
            self._used = 0
        if self._used < self.per_second:
            self._used += 1
            return True, told
        self.suppressed += 1
        return False, told

    def settle(self) -> int:
        """The count of lines held back so far, now told (reset to 0)."""
        told, self.suppressed = self.suppressed, 0
        return told


class RefusalLog:
    """Writes refusal lines through a ``LineBudget``; what it holds back is told in one
    warning when the window closes (a timer, so a flood that stops is still reported)."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, per_second: int = REFUSAL_LINES_PER_S
    ) -> None:
        self._loop = loop
        self._budget = LineBudget(per_second)
        self._timer: asyncio.TimerHandle | None = None

    def write(self, line: str) -> None:
        write, told = self._budget.take(self._loop.time())
        if told:
            # A new window opened before the last one's timer ran: told here instead.
            self._cancel_timer()
            self._tell(told)
        if write:
            log_access(line)
        elif self._timer is None:
            self._timer = self._loop.call_at(self._budget.window_end, self.flush)

    def flush(self) -> None:
        """Tell what was held back (the window's end, or the gateway's stop)."""
        self._cancel_timer()
        told = self._budget.settle()
        if told:
            self._tell(told)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tell(self, count: int) -> None:
        ACCESS.warning(
            "%d more refusals suppressed (at most %d refusal lines a second)",
            count,
            self._budget.per_second,
        )
