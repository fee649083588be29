"""Real Node clients against the gateway: the official ``openai`` npm package and the Vercel
AI SDK (``ai`` with ``@ai-sdk/openai`` for the Responses API and ``@ai-sdk/openai-compatible``
for Chat Completions), run by ``tests/node/clients.mjs`` over loopback on the simulator.

The script runs once per module and prints one JSON line per check; each check is one test
here. The packages are pinned in ``tests/node/package-lock.json`` and installed with
``npm ci`` when ``tests/node/node_modules`` is missing (scripts/test installs Debian's nodejs
and npm; where they are absent these tests skip).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from harness import Harness

NODE_DIR = Path(__file__).resolve().parent / "node"
SCRIPT = NODE_DIR / "clients.mjs"
NPM_CI_TIMEOUT = 120
SCRIPT_TIMEOUT = 60

# Every check clients.mjs runs, in its order; a check it stops printing fails here.
CHECKS = (
    "openai.chat.create",
    "openai.chat.stream",
    "openai.embeddings",
    "openai.models.list",
    "openai.models.retrieve",
    "openai.completions.create",
    "openai.responses.create",
    "openai.responses.stream",
    "ai-sdk.responses.generateText",
    "ai-sdk.responses.streamText",
    "ai-sdk.chat.generateText",
    "ai-sdk.chat.streamText",
    # Forced tool calls (toolChoice: 'required'), on each API.
    "ai-sdk.chat.tool-required",
    "ai-sdk.responses.tool-required",
)

pytestmark = pytest.mark.timeout(NPM_CI_TIMEOUT + SCRIPT_TIMEOUT + 30)


def _tools() -> tuple[str, str]:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.skip("node and npm are not installed (scripts/test installs Debian's nodejs, npm)")
    return node, npm


def _install(npm: str) -> None:
    """``npm ci`` from the committed lock file, once, when node_modules is missing."""
    if (NODE_DIR / "node_modules").is_dir():
        return
    try:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=NODE_DIR,
            capture_output=True,
            text=True,
            timeout=NPM_CI_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        shutil.rmtree(NODE_DIR / "node_modules", ignore_errors=True)
        pytest.fail(f"npm ci in {NODE_DIR} took over {NPM_CI_TIMEOUT} s")
    if done.returncode != 0:
        # A half-installed tree would be taken as installed next time.
        shutil.rmtree(NODE_DIR / "node_modules", ignore_errors=True)
        pytest.fail(f"npm ci failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")


@pytest.fixture(scope="module")
def results() -> dict[str, dict[str, Any]]:
    node, npm = _tools()
    _install(npm)
    with Harness() as h:
        try:
            done = subprocess.run(
                [node, str(SCRIPT), h.base_url],
                capture_output=True,
                text=True,
                timeout=SCRIPT_TIMEOUT,
            )
        except subprocess.TimeoutExpired as exc:
            pytest.fail(f"clients.mjs ran over {SCRIPT_TIMEOUT} s; output so far: {exc.stdout!r}")
    lines: dict[str, dict[str, Any]] = {}
    for raw in done.stdout.splitlines():
        line = json.loads(raw)
        assert set(line) == {"name", "ok", "detail"}, line
        assert line["name"] not in lines, f"{line['name']} printed twice"
        lines[line["name"]] = line
    assert list(lines) == list(CHECKS), f"checks printed: {list(lines)}\nstderr: {done.stderr}"
    # The exit status agrees with the lines: non-zero exactly when a check failed.
    assert (done.returncode == 0) == all(line["ok"] for line in lines.values()), (
        done.returncode,
        done.stderr,
    )
    return lines


@pytest.mark.parametrize("name", CHECKS)
def test_node_client(results: dict[str, dict[str, Any]], name: str) -> None:
    line = results[name]
    assert line["ok"] is True, f"{name}: {line['detail']}"
