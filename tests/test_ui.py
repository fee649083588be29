"""The web UI in a real headless Chromium, against the gateway and the Ollama simulator.

Debian's ``chromium`` is driven by Playwright's Python package (``executable_path``: no
browser download). The browser runs in this thread; the harness runs the gateway and the
simulator on their loop in another. Without chromium these tests fail, with how to fix it
(``scripts/test`` installs it); ``CLAWPROXY_SKIP_BROWSER=1`` skips them on purpose.

Every page is checked for console errors and uncaught exceptions, and each test leaves a
screenshot in ``test-artifacts/`` for a human to look at.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest
from browser_helpers import ARTIFACTS, DESKTOP, WAIT_MS, launched_browser
from harness import Harness, post_json, request
from playwright.sync_api import Browser, Page, expect

from clawproxy.http.request import Request
from clawproxy.simulator import Reply
from clawproxy.telemetry.gpusample import GpuReading, GpuSample

PHONE = {"width": 390, "height": 844}
# Between two looks at a streaming reply: short, so a 20 tokens/s stream shows its steps.
SAMPLE_MS = 40
CHAT = {"messages": [{"role": "user", "content": "hello"}]}
SETTINGS = {"gpu.enabled": False}
GIB = 1024**3


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    yield from launched_browser()


@contextmanager
def open_page(
    browser: Browser,
    h: Harness,
    path: str,
    *,
    viewport: dict[str, int] = DESKTOP,
    expected_errors: Sequence[str] = (),
) -> Iterator[Page]:
    """A page in a fresh context (its own localStorage); fails on unexpected console errors."""
    context = browser.new_context(viewport=viewport)  # type: ignore[arg-type]
    context.set_default_timeout(WAIT_MS)
    page = context.new_page()
    errors: list[str] = []
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    try:
        page.goto(h.base_url + path)
        yield page
    finally:
        context.close()
    unexpected = [e for e in errors if not any(allowed in e for allowed in expected_errors)]
    assert not unexpected, f"console errors on {path}: {unexpected}"


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"ui-{name}.png"), full_page=True)


# --- status ---------------------------------------------------------------------------------


def test_status_page_shows_state_and_charts_follow_traffic(browser: Browser) -> None:
    with Harness(SETTINGS) as h, open_page(browser, h, "/ui") as page:
        expect(page.locator("#model")).to_have_text("qwen3:32b")
        expect(page.locator("#model-sub")).to_contain_text("Q4_K_M")
        expect(page.locator("#gateway-status")).to_have_text("ok")
        expect(page.locator("#ollama")).to_have_attribute("data-state", "up")
        expect(page.locator("#ollama-sub")).to_contain_text("0.33.0")
        expect(page.locator("#active")).to_have_text("0 / 4")
        expect(page.locator("#queued")).to_have_text("0 / 3")
        expect(page.locator("#rps-chart canvas")).to_be_visible()
        expect(page.locator("#latency-chart canvas")).to_be_visible()
        # The page polls every second; its own polls are not traffic, so the chart is flat.
        expect(page.locator("#latency-chart")).not_to_have_attribute("data-points", "0")
        expect(page.locator("#rps-chart")).to_have_attribute("data-total", "0")
        for _ in range(5):
            status, _, _ = post_json(h, "/v1/chat/completions", CHAT)
            assert status == 200
        expect(page.locator("#rps-chart")).to_have_attribute("data-total", "5")
        expect(page.locator("#latency-chart")).not_to_have_attribute("data-duration-p50", "")
        expect(page.locator("#rate-sub")).to_contain_text("5 requests")
        shot(page, "status")
        assert h.settled()


def test_status_page_shows_ollama_down(browser: Browser) -> None:
    with Harness(SETTINGS, start_simulator=False) as h, open_page(browser, h, "/ui") as page:
        expect(page.locator("#ollama")).to_have_attribute("data-state", "down")
        expect(page.locator("#ollama-status")).to_have_text("down")
        expect(page.locator("#ollama-sub")).not_to_be_empty()  # why, in words
        expect(page.locator("#model")).to_have_text("qwen3:32b")
        # The gateway's status is admin /health's: Ollama down means degraded, not ok.
        expect(page.locator("#gateway-status")).to_have_text("degraded")
        expect(page.locator("#card-gateway")).to_have_attribute("data-state", "degraded")
        shot(page, "status-ollama-down")


def test_latency_chart_is_filled_at_first_paint_with_chat_latency_only(browser: Browser) -> None:
    with Harness(SETTINGS) as h:

        def earlier_traffic() -> None:
            # Chat requests that ended 200, 100 and 2 seconds ago, as the gateway records them.
            now = h.loop.time()
            for ago, duration in ((200, 4.0), (100, 1.0), (2, 0.6)):
                req = Request(b"POST", b"/v1/chat/completions", [], b"", "-", b"1.1", 0.0)
                req.started, req.status, req.model = now - ago - duration, 200, "qwen3:32b"
                req.first_token_at = req.started + 0.1
                h.gateway.state.record_request(req, "/v1/chat/completions", now - ago)

        h.read(earlier_traffic)
        # Fast requests that are not chat: they must not pull the chat percentiles down.
        for path in ("/health", "/v1/models") * 5:
            assert request(h, "GET", path)[0] == 200
        with open_page(browser, h, "/ui") as page:
            chart = page.locator("#latency-chart")
            # The page was opened a moment ago, yet its chart holds requests of 100 and 200 s
            # ago: the history comes with the snapshot, not from the page's own polling.
            expect(chart).to_have_attribute("data-filled", "3")
            p50 = float(chart.get_attribute("data-duration-p50") or "0")
            assert 400 < p50 < 800, p50  # the 0.6 s chat request, not the ~0 ms polls
            shot(page, "status-latency-history")


def test_chat_page_polls_are_not_traffic(browser: Browser) -> None:
    with Harness(SETTINGS) as h, open_page(browser, h, "/ui/chat") as page:
        expect(page.locator("#model option")).to_have_count(1 + 3)
        expect(page.locator("#model option").first).to_have_text("Gateway default (qwen3:32b)")
        _, _, body = request(h, "GET", "/ui/api/stats")
        stats = json.loads(body)
        assert stats["recent"] == []
        assert stats["requests"] == []


# --- chat -----------------------------------------------------------------------------------

REPLY_TOKENS = [
    "Here ",
    "is ",
    "**bold** ",
    "text, ",
    "`code`, ",
    "and ",
    "<img src=x onerror=alert(1)>",
    " <script>alert(2)</script> ",
    "shown ",
    "as ",
    "text.",
    "\n\n",
    "- one\n",
    "- two\n",
    "\n",
    "The ",
    "end.",
]


def reply_lengths_until_done(page: Page) -> list[int]:
    """The visible length of the last reply, sampled until its stream ends."""
    reply = page.locator(".msg.assistant").last
    lengths: list[int] = []
    for _ in range(WAIT_MS // SAMPLE_MS):
        if reply.get_attribute("data-state") != "streaming":
            break
        lengths.append(len(reply.locator(".body").inner_text()))
        page.wait_for_timeout(SAMPLE_MS)
    return lengths


def test_chat_streams_reply_visibly_and_renders_markdown_safely(browser: Browser) -> None:
    with Harness(SETTINGS) as h, open_page(browser, h, "/ui/chat") as page:
        expect(page.locator("#model option")).to_have_count(1 + 3, timeout=WAIT_MS)
        h.sim.token_rate = 20
        h.sim.next_reply(Reply(tokens=REPLY_TOKENS))
        box = page.locator("#input")
        box.fill("first line")
        box.press("Shift+Enter")  # a new line, not a send
        box.press_sequentially("second line")
        assert box.input_value() == "first line\nsecond line"
        assert page.locator(".msg").count() == 0
        box.press("Enter")
        lengths = reply_lengths_until_done(page)
        reply = page.locator(".msg.assistant").last
        expect(reply).to_have_attribute("data-state", "done")
        grew = [n for n in lengths if n]
        assert len(set(grew)) >= 3, f"the reply did not stream in steps: {lengths}"
        assert grew == sorted(grew), f"the reply shrank while streaming: {lengths}"
        body = reply.locator(".body")
        text = body.inner_text()
        assert "<img src=x onerror=alert(1)> <script>alert(2)</script>" in text
        assert body.locator("img, script").count() == 0
        expect(body.locator("strong")).to_have_text("bold")
        expect(body.locator("code")).to_have_text("code")
        expect(body.locator("li")).to_have_text(["one", "two"])
        assert text.rstrip().endswith("The end.")
        expect(page.locator(".msg.user")).to_have_text("first line\nsecond line")
        sent = h.sim.requests[-1].json
        assert sent["messages"] == [{"role": "user", "content": "first line\nsecond line"}]
        assert box.input_value() == ""
        expect(page.locator("#history li")).to_have_count(1)
        shot(page, "chat")
        # The conversation is kept in the browser: a reload shows it again.
        page.reload()
        expect(page.locator(".msg")).to_have_count(2)
        expect(page.locator(".msg.assistant strong")).to_have_text("bold")
        assert h.settled()


# Each case: Markdown a model might write, and the link targets its rendering must show.
LINK_CASES = [
    # The visible text names one site, the link goes to another.
    ("[https://bank.example/login](https://evil.example/x)", "https://evil.example/x"),
    ("Read [the docs](https://evil.example/) now.", "https://evil.example/"),
    # A look-alike host shows as what it is (punycode), not as the letters it imitates.
    ("[apple](https://\u0430\u0440\u0440\u04cf\u0435.com/)", "https://xn--80ak6aa92e.com/"),
    # Text that is the target already: shown once.
    ("[https://example.com/a](https://example.com/a)", "https://example.com/a"),
]


def test_a_markdown_link_shows_its_real_target(browser: Browser) -> None:
    """A link's visible text must not hide where it goes: every clickable text is its own
    target, and a label that differs stays as plain text beside it."""
    script = """async (cases) => {
      const {renderMarkdown} = await import('/ui/assets/markdown.js');
      return cases.map((text) => {
        const div = document.createElement('div');
        renderMarkdown(div, text);
        const links = [...div.querySelectorAll('a')].map((a) => [a.textContent, a.href]);
        return {text: div.textContent, links};
      });
    }"""
    with Harness(SETTINGS) as h, open_page(browser, h, "/ui/chat") as page:
        expect(page.locator("#input")).to_be_visible()
        rendered = page.evaluate(script, [text for text, _ in LINK_CASES])
    for (source, target), out in zip(LINK_CASES, rendered, strict=True):
        assert target in out["text"], (source, out)
        assert out["links"], (source, out)
        for text, href in out["links"]:
            assert text == href == target, (source, out)
    # Same text and target: one link, the URL written once.
    assert rendered[-1]["text"] == "https://example.com/a"
    # The label the model wrote is kept, as text.
    assert "the docs" in rendered[1]["text"]


def test_stop_aborts_the_stream_upstream_too(browser: Browser) -> None:
    with Harness(SETTINGS) as h, open_page(browser, h, "/ui/chat") as page:
        h.sim.token_rate = 20
        h.sim.next_reply(Reply(tokens=[f"word{i} " for i in range(400)]))
        page.locator("#input").fill("tell me a long story")
        page.locator("#input").press("Enter")
        reply = page.locator(".msg.assistant").last
        expect(reply.locator(".body")).to_contain_text("word3")
        page.locator("#stop").click()
        expect(reply).to_have_attribute("data-state", "stopped")
        expect(reply.locator(".note")).to_have_text("Stopped.")
        expect(page.locator("#send")).to_be_visible()
        outcome = h.call(lambda: h.sim.streams[-1].wait_ended(5.0))
        assert outcome == "client_closed"
        assert "word399" not in reply.locator(".body").inner_text()
        shot(page, "chat-stopped")
        assert h.settled()


# --- internals ------------------------------------------------------------------------------


def test_internals_lists_model_gpu_note_and_recent_requests(browser: Browser) -> None:
    with Harness(SETTINGS) as h:
        for _ in range(2):
            assert post_json(h, "/v1/chat/completions", CHAT)[0] == 200
        missing = {"model": "nosuch:1b", **CHAT}
        assert post_json(h, "/v1/chat/completions", missing)[0] == 404
        with open_page(browser, h, "/ui/internals") as page:
            rows = page.locator("#recent tbody tr")
            expect(rows).to_have_count(3)
            # A name Ollama does not have is not shown (it is the client's, not a model).
            expect(rows.first).not_to_contain_text("nosuch:1b")
            expect(rows.first).to_contain_text("404")
            expect(rows.nth(2)).to_contain_text("/v1/chat/completions")
            expect(rows.nth(2)).to_contain_text("200")
            facts = page.locator("#model-facts")
            expect(facts).to_contain_text("qwen3")
            expect(facts).to_contain_text("32.8B")
            expect(facts).to_contain_text("Q4_K_M")
            expect(facts).to_contain_text("40,960")
            expect(page.locator("#no-gpu")).to_contain_text("No GPU telemetry")
            # Prompt text never reaches the snapshot, so never the page.
            assert "hello" not in page.locator("main").inner_text()
            shot(page, "internals")


def test_internals_shows_each_gpu(browser: Browser) -> None:
    gpus = (
        GpuReading(0, "NVIDIA H100", 40 * GIB, 80 * GIB, 73),
        GpuReading(1, "NVIDIA L4", 1 * GIB, 24 * GIB, None),
    )
    sample = GpuSample(available=True, gpus=gpus, sampled_at=time.time())
    with Harness(SETTINGS) as h:

        def install() -> None:
            h.gateway.state.gpu = sample

        h.read(install)
        with open_page(browser, h, "/ui/internals") as page:
            rows = page.locator("#gpus tbody tr")
            expect(rows).to_have_count(2)
            expect(rows.first).to_contain_text("0: NVIDIA H100")
            expect(rows.first).to_contain_text("40 GiB / 80 GiB")
            expect(rows.first).to_contain_text("73%")
            expect(rows.nth(1)).to_contain_text("1.0 GiB / 24 GiB")
            bar = rows.first.locator(".meter > span")
            expect(bar).to_have_attribute("data-percent", "50")
            width = bar.evaluate("e => e.getBoundingClientRect().width / e.parentNode.clientWidth")
            assert 0.45 < width < 0.55
            assert page.locator("#no-gpu").count() == 0
            shot(page, "internals-gpus")


# --- API keys -------------------------------------------------------------------------------


def test_api_key_is_asked_for_once_and_kept(browser: Browser) -> None:
    key = "sk-ui-test-0123456789"
    refused = ["401"]  # Chromium logs each refused fetch as a console error
    with (
        Harness({**SETTINGS, "auth.api_keys": [key]}) as h,
        open_page(browser, h, "/ui", expected_errors=refused) as page,
    ):
        dialog = page.locator("#key-dialog")
        expect(dialog).to_be_visible()
        page.locator("#api-key-input").fill("sk-wrong")
        page.locator("#api-key-input").press("Enter")
        expect(dialog).to_contain_text("refused the stored key")
        page.locator("#api-key-input").fill(key)
        page.locator("#api-key-input").press("Enter")
        expect(dialog).to_have_count(0)
        expect(page.locator("#model")).to_have_text("qwen3:32b")
        expect(page.locator("#forget-key")).to_be_visible()
        shot(page, "status-with-key")
        # Kept in the browser: the chat page needs no second prompt.
        page.goto(h.base_url + "/ui/chat")
        expect(page.locator("#model option")).to_have_count(1 + 3)
        page.locator("#input").fill("with a key")
        page.locator("#input").press("Enter")
        expect(page.locator(".msg.assistant")).to_have_attribute("data-state", "done")
        assert page.locator("#key-dialog").count() == 0
        assert h.sim.requests[-1].json["messages"][-1]["content"] == "with a key"
        assert h.settled()


# --- layout ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "ready"),
    [("/ui", "#rps-chart canvas"), ("/ui/chat", "#input"), ("/ui/internals", "#recent tbody tr")],
)
def test_pages_fit_a_phone(browser: Browser, path: str, ready: str) -> None:
    with Harness(SETTINGS) as h:
        assert post_json(h, "/v1/chat/completions", CHAT)[0] == 200
        with open_page(browser, h, path, viewport=PHONE) as page:
            expect(page.locator(ready).first).to_be_visible()
            overflow = page.evaluate(
                "document.documentElement.scrollWidth - document.documentElement.clientWidth"
            )
            assert overflow <= 0, f"{path} is {overflow}px wider than a phone screen"
            name = path.strip("/").replace("/", "-")
            shot(page, f"phone-{name}")
