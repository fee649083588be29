"""The README's examples, run as written against a gateway on the simulator."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from harness import Harness

README = Path(__file__).resolve().parent.parent / "README.md"
README_BASE_URL = "http://127.0.0.1:8080/v1"


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_streaming_client_example_prints_the_reply_and_ends_its_line() -> None:
    (example,) = [block for block in python_blocks() if "end=" in block]
    assert README_BASE_URL in example
    with Harness({"gpu.enabled": False}) as h:
        code = example.replace(README_BASE_URL, h.base_url + "/v1")
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
        )
    assert done.stdout.strip(), done.stderr
    # Tokens are printed with end="": the example must end the line itself, or the shell's
    # prompt lands on the reply's last line.
    assert done.stdout.endswith("\n"), repr(done.stdout[-40:])
