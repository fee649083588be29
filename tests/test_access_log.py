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
    access_enabled,
    access_line,
    escape_path,
    log_access,
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
