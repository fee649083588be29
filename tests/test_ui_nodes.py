"""The internals page's Nodes panel in a real headless Chromium, against a gateway that
fronts several simulated Ollama nodes.

Chromium is driven as in ``test_ui.py`` (Debian's ``chromium`` through Playwright's Python
package, no browser download; ``CLAWPROXY_SKIP_BROWSER=1`` skips on purpose). Each page is
checked for console errors and uncaught exceptions, and leaves a screenshot in
``test-artifacts/``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from browser_helpers import ARTIFACTS, DESKTOP, WAIT_MS, launched_browser
from harness import Harness, NodesHarness, admin_call, request
from playwright.sync_api import Browser, Page, Route, expect

SETTINGS = {"gpu.enabled": False}

# A snapshot's nodes rows edited in flight, for the states a live pool rarely holds still.
Edit = Callable[[list[dict[str, Any]]], list[dict[str, Any]]]


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launched_browser()


@contextmanager
def open_page(browser: Browser, h: Harness, path: str, edit: Edit | None = None) -> Iterator[Page]:
    """A page in a fresh context; fails on console errors. ``edit``: rewrite the nodes rows
    of every ``/ui/api/stats`` answer the page gets."""
    context = browser.new_context(viewport=DESKTOP)  # type: ignore[arg-type]
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    if edit is not None:

        def rewrite(route: Route) -> None:
            response = route.fetch()
            body = response.json()
            body["nodes"] = edit(body.get("nodes") or [])
            route.fulfill(response=response, json=body)

        page.route("**/ui/api/stats", rewrite)
    try:
        page.goto(h.base_url + path)
        yield page
    finally:
        context.close()
    assert not errors, f"console errors on {path}: {errors}"


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"ui-{name}.png"), full_page=True)


def node_rows(h: Harness) -> list[dict[str, Any]]:
    status, _, body = request(h, "GET", "/ui/api/stats")
    assert status == 200
    rows: list[dict[str, Any]] = json.loads(body)["nodes"]
    return rows


def test_ui_stats_nodes_rows_carry_no_url() -> None:
    with NodesHarness([{}, {"node": {"max_concurrent": 2}}], SETTINGS) as h:
        rows = node_rows(h)
        assert [row["name"] for row in rows] == ["n0", "n1"]
        for row in rows:
            assert "url" not in row, row
            assert all("127.0.0.1:" not in str(value) for value in row.values()), row


def test_internals_lists_nodes_and_follows_a_drain(browser: Browser) -> None:
    with (
        NodesHarness([{}, {"node": {"max_concurrent": 2}}], SETTINGS) as h,
        open_page(browser, h, "/ui/internals") as page,
    ):
        rows = page.locator("#nodes-table tbody tr")
        expect(rows).to_have_count(2)
        n0, n1 = page.locator('tr[data-node="n0"]'), page.locator('tr[data-node="n1"]')
        expect(n0.locator("td").first).to_have_text("n0")
        expect(n1.locator("td").first).to_have_text("n1")
        expect(n0.locator(".node-state")).to_have_text("up")
        expect(n1.locator(".node-state")).to_have_text("up")
        expect(n0.locator(".node-state")).to_have_class("node-state status-ok")
        expect(n0.locator(".node-load")).to_have_text("0 / 4")
        expect(n1.locator(".node-load")).to_have_text("0 / 2")
        expect(n1.locator(".node-load .meter > span")).to_have_attribute("data-percent", "0")
        assert page.locator("#no-nodes").count() == 0
        # Without Redis the slots are this gateway's alone, and the page says so.
        expect(page.locator("#coordination")).to_contain_text("local (this gateway alone)")

        status, body = admin_call(h, "POST", "/nodes/n1/drain")
        assert status == 200, body
        # The next poll (every 2 s) shows it; the bounded wait is expect's.
        expect(n1).to_have_attribute("data-state", "draining")
        expect(n1.locator(".node-state")).to_have_text("draining")
        expect(n0.locator(".node-state")).to_have_text("up")
        color = n1.locator(".node-state").evaluate("e => getComputedStyle(e).color")
        up_color = n0.locator(".node-state").evaluate("e => getComputedStyle(e).color")
        assert color != up_color
        shot(page, "internals-nodes")


HOSTILE = '<img src=x onerror="document.title=1"> connection refused ' + "x" * 200


def test_internals_nodes_show_ejection_errors_as_text(browser: Browser) -> None:
    def edit(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        ejected = {
            **rows[0],
            "state": "ejected",
            "inflight": 0,
            "failures": 3,
            "ejections": 2,
            "trial_in_seconds": 4.2,
            "last_error": HOSTILE,
            "failovers": {"connect": 2, "status_503": 1},
            "loaded_models": ["qwen3:32b", "llama3:8b"],
        }
        disabled = {**rows[1], "state": "disabled", "inflight": 1, "max_concurrent": 2}
        return [ejected, disabled]

    with (
        NodesHarness([{}, {"node": {"max_concurrent": 2}}], SETTINGS) as h,
        open_page(browser, h, "/ui/internals", edit) as page,
    ):
        n0, n1 = page.locator('tr[data-node="n0"]'), page.locator('tr[data-node="n1"]')
        expect(n0.locator(".node-state")).to_have_text("ejected · trial in 5s")
        expect(n0.locator(".node-state")).to_have_class("node-state status-bad")
        expect(n1.locator(".node-state")).to_have_text("disabled")
        expect(n1.locator(".node-state")).to_have_class("node-state muted")
        expect(n1.locator(".node-load")).to_have_text("1 / 2")
        expect(n1.locator(".node-load .meter > span")).to_have_attribute("data-percent", "50")
        cells = n0.locator("td")
        expect(cells.nth(4)).to_have_text("3")  # failures
        expect(cells.nth(5)).to_have_text("2")  # ejections
        expect(cells.nth(6)).to_have_text("3")  # failovers, all reasons
        expect(cells.nth(6)).to_have_attribute("title", "connect 2, status_503 1")
        expect(cells.nth(7)).to_have_text("qwen3:32b, llama3:8b")
        error = cells.nth(8)
        text = error.inner_text()
        assert text.startswith('<img src=x onerror="document.title=1"> connect')
        assert text.endswith("…") and len(text) <= 48
        expect(error).to_have_attribute("title", HOSTILE)  # the whole error, as a tooltip
        assert page.locator("#nodes img").count() == 0
        assert page.title() != "1"
        shot(page, "internals-nodes-ejected")


def test_internals_nodes_empty_list_is_a_muted_line(browser: Browser) -> None:
    with (
        NodesHarness([{}], SETTINGS) as h,
        open_page(browser, h, "/ui/internals", lambda rows: []) as page,
    ):
        expect(page.locator("#no-nodes")).to_have_text("No nodes in the pool.")
        expect(page.locator("#no-nodes")).to_have_class("muted")
        assert page.locator("#nodes-table").count() == 0
