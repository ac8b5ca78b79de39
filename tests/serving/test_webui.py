"""`ember webui` in a real browser: headless Debian Chromium driven by Playwright (never `playwright install`)."""

from __future__ import annotations

import os
import re
import socket

import pytest

from ember.data.conversation import Message
from ember.inference.engine import GenerationOptions

ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-quic",
        "--no-first-run", "--disable-component-update", "--disable-sync"]
QUESTION = "Tell me a story"  # the tiny model's greedy answer to it is plain words (checked below)
OPTIONS = GenerationOptions(max_new_tokens=30)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def squash(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.browser
def test_webui_streams_an_answer_in_headless_chromium(tiny_engine, tmp_path, chromium):
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from playwright.sync_api import sync_playwright

    from ember.serving.webui import build_ui

    answer = tiny_engine.generate([Message("user", QUESTION)], OPTIONS).text
    assert re.fullmatch(r"[A-Za-z0-9 .,;:'?!-]+", answer), "the fixture model changed: pick another QUESTION"

    port = free_port()
    ui = build_ui(tiny_engine, OPTIONS)
    ui.queue().launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, headless=True, args=ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 800})
            page.goto(f"http://127.0.0.1:{port}/", wait_until="networkidle")
            # Keep every text the conversation shows, to see the answer grow piece by piece.
            page.evaluate("""() => {
                window.__seen = [];
                const chat = document.querySelector('#ember-chat');
                new MutationObserver(() => window.__seen.push(chat.innerText))
                    .observe(chat, {subtree: true, childList: true, characterData: true});
            }""")
            page.locator("#ember-input textarea").fill(QUESTION)
            page.locator("#ember-input textarea").press("Enter")
            page.wait_for_function(
                "want => document.querySelector('#ember-chat').innerText.replace(/\\s+/g, ' ').includes(want)",
                arg=squash(answer), timeout=60_000)
            shot = tmp_path / "webui.png"
            page.screenshot(path=str(shot), full_page=True)
            seen = [squash(t) for t in page.evaluate("() => window.__seen")]
            shown = squash(page.locator("#ember-chat").inner_text())
            browser.close()
        assert QUESTION in shown and squash(answer) in shown
        partial = [t for t in seen if QUESTION in t and squash(answer) not in t and squash(answer)[:8] in t]
        assert partial, "the answer appeared all at once instead of streaming"
        assert shot.stat().st_size > 10_000
    finally:
        ui.close()


def test_page_history_becomes_whole_turns_and_settings_become_options():
    from ember.serving.webui import history_messages, page_options

    history = [
        {"role": "user", "content": [{"type": "text", "text": "first"}]},  # Gradio 6 hands content back as parts
        {"role": "assistant", "content": "answer one"},
        {"role": "user", "content": "stopped before any answer"},
        {"role": "user", "content": "second"},
        {"role": "assistant", "content": [{"type": "text", "text": "answer "}, {"type": "text", "text": "two"}]},
    ]
    assert history_messages(history) == [Message("user", "first"), Message("assistant", "answer one"),
                                         Message("user", "second"), Message("assistant", "answer two")]
    greedy = page_options(GenerationOptions(), 12, 0, 0.9)
    assert (greedy.max_new_tokens, greedy.do_sample, greedy.top_p) == (12, False, 0.9)
    sampled = page_options(GenerationOptions(), 8, 0.7, 0.5)
    assert (sampled.do_sample, sampled.temperature, sampled.top_p) == (True, 0.7, 0.5)
