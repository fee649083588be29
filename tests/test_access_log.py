"""The access line: paths escaped so no client can forge a log line, whatever it sends."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from clawproxy.logs import access_line, escape_path


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
