"""Headless Chromium for the UI tests: Debian's chromium driven by Playwright.

One ``launched_browser()`` per test module (its ``browser`` fixture); the constants every
UI test shares. Skipped only on purpose (``CLAWPROXY_SKIP_BROWSER=1``); a missing Chromium
fails, since ``scripts/test`` installs it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect, sync_playwright

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
DESKTOP = {"width": 1280, "height": 800}
# Playwright's waits (expect, wait_for_function) give up after this many milliseconds.
WAIT_MS = 10_000


def launched_browser() -> Iterator[Browser]:
    """The body of a module's ``browser`` fixture: one Chromium for the module's tests."""
    if os.environ.get("CLAWPROXY_SKIP_BROWSER") == "1":
        pytest.skip("CLAWPROXY_SKIP_BROWSER=1: browser tests skipped on purpose")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"{CHROMIUM} is missing: install Debian's chromium package (scripts/test does), "
            "or set CLAWPROXY_SKIP_BROWSER=1 to skip the browser tests",
            pytrace=False,
        )
    expect.set_options(timeout=WAIT_MS)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()
