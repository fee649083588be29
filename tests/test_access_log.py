"""The access line: paths escaped so no client can forge a log line, whatever it sends."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from clawproxy.config import LoggingConfig
from clawproxy.telemetry import logs
from clawproxy.telemetry.logs import (
    LineBudget,
    access_enabled,
    access_line,
    escape_path,
    log_access,
    refusal_line,
    setup_logging,
)


def reference_escape(path: bytes, limit: int = 200) -> str:
    """Byte by byte, the rule stated plainly: printable ASCII stays, all else is \\xNN."""
    out = "".join(chr(c) if 0x20 <= c < 0x7F else f"\\x{c:02x}" for c in path[:limit])
    return out + ("..." if len(path) > limit else "")


@given(st.binary(max_size=400))
def test_escaped_paths_are_printable_ascii_and_follow_the_rule(path: bytes) -> None:
    text = escape_path(path)
    assert text.isascii() and text.isprintable()
    assert text == reference_escape(path)


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=300))
def test_printable_paths_pass_unchanged_up_to_the_limit(path: str) -> None:
    raw = path.encode()
    assert escape_path(raw) == path[:200] + ("..." if len(raw) > 200 else "")


def test_a_forged_line_stays_on_one_line() -> None:
    line = access_line(
        "127.0.0.1", b"GET", b"/x\r\n2026 INFO forged\x1b[31m", 404, "-", None, 0.001, 0, ""
    )
    assert "\n" not in line and "\r" not in line and "\x1b" not in line
    assert "/x\\x0d\\x0a2026 INFO forged\\x1b[31m" in line


@pytest.fixture
def log_file(tmp_path: Path) -> Iterator[Path]:
    """setup_logging to a file, and logging as it was afterwards (it is process-wide)."""
    root = logging.getLogger("clawproxy")
    saved = (list(root.handlers), root.level, root.propagate)
    path = tmp_path / "clawproxy.log"
    yield path
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    root.propagate = saved[2]
    logs._Direct.handler = None


LINE_RE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (INFO|WARNING) clawproxy(\.\w+)?: ")


def test_access_lines_share_the_log_format_and_file(log_file: Path) -> None:
    setup_logging(LoggingConfig(level="info", file=str(log_file)))
    logging.getLogger("clawproxy").warning("a warning")
    log_access("127.0.0.1 first")
    logging.getLogger("clawproxy.gateway").info("an ordinary line")
    log_access("127.0.0.1 second")
    lines = log_file.read_text().splitlines()
    assert len(lines) == 4
    assert all(LINE_RE.match(line) for line in lines), lines
    # Written in order, each at once (nothing waits in a buffer).
    assert lines[1].endswith("INFO clawproxy.access: 127.0.0.1 first")
    assert lines[3].endswith("INFO clawproxy.access: 127.0.0.1 second")


def test_no_access_lines_above_info(log_file: Path) -> None:
    setup_logging(LoggingConfig(level="warning", file=str(log_file)))
    assert not access_enabled()
    log_access("127.0.0.1 hidden")
    assert "hidden" not in log_file.read_text()


# --- refusals: the same line, bounded -----------------------------------------------------

# One access line, a request's or a refusal's (tests/test_refusal_log.py reads them so too).
ACCESS_RE = re.compile(
    r'^(?P<client>\S+) "(?P<method>\S+) (?P<path>\S+)" (?P<status>\d{3}) model=(?P<model>\S+) '
    r"ttft_ms=(?P<ttft>[\d.]+|-) duration_ms=(?P<duration>[\d.]+|-) tokens=(?P<tokens>\d+) "
    r"outcome=(?P<outcome>\S+) key=(?P<key>\S+) node=(?P<node>\S+) rid=(?P<rid>\S+)$"
)


def test_refusal_lines_parse_like_access_lines() -> None:
    served = access_line("10.0.0.1", b"GET", b"/health", 200, "-", None, 0.0012, 0, "")
    refused = refusal_line("10.0.0.1", b"POST", b"/v1/chat/completions", 413, "request_too_large")
    unknown = refusal_line("10.0.0.1", b"", b"", 503, "too_many_connections")
    fields = [m.groupdict() for m in map(ACCESS_RE.match, (served, refused, unknown)) if m]
    assert len(fields) == 3, (served, refused, unknown)
    assert fields[0]["outcome"] == "ok" and fields[0]["duration"] == "1.2"
    assert fields[1] == {
        "client": "10.0.0.1",
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": "413",
        "model": "-",
        "ttft": "-",
        "duration": "-",
        "tokens": "0",
        "outcome": "request_too_large",
        "key": "-",
        "node": "-",
        "rid": "-",
    }
    assert (fields[2]["method"], fields[2]["path"]) == ("-", "-")


def test_a_refused_path_is_escaped_like_any_other() -> None:
    line = refusal_line("1.2.3.4", b"G\x1bT", b"/x\r\nforged", 400, "bad_framing")
    assert "\n" not in line and "\x1b" not in line
    assert ACCESS_RE.match(line)


def test_line_budget_writes_n_a_second_and_tells_the_rest_once() -> None:
    budget = LineBudget(per_second=3)
    verdicts = [budget.take(100.0 + i * 0.01) for i in range(10)]
    assert [write for write, _ in verdicts] == [True] * 3 + [False] * 7
    assert all(told == 0 for _, told in verdicts)
    assert budget.suppressed == 7
    # The next second's first line comes with the count of the second before it.
    assert budget.take(101.0) == (True, 7)
    assert budget.suppressed == 0
    # A window's count can also be settled by a timer when no line follows (the window
    # opened at 101.0 has one line already: two more pass, three are held back).
    for i in range(5):
        budget.take(101.5 + i * 0.01)
    assert budget.settle() == 3
    assert budget.settle() == 0
    assert budget.take(103.0) == (True, 0)


@given(st.lists(st.floats(min_value=0, max_value=20), max_size=200))
def test_line_budget_never_passes_more_than_n_in_a_second(times: list[float]) -> None:
    budget = LineBudget(per_second=4)
    written: list[float] = []
    told = 0
    for now in sorted(times):
        write, earlier = budget.take(now)
        told += earlier
        if write:
            written.append(now)
    told += budget.settle()
    assert len(written) + told == len(times)
    # Windows are fixed (each opens at its first line): 9 lines span three of them.
    assert all(b - a > 1.0 for a, b in zip(written, written[8:], strict=False))
