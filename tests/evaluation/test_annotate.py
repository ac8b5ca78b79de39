"""`ember eval annotate`: verdicts saved at once, outcomes mapped back through the random order, resume; browser."""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from ember.evaluation.annotate import AnnotationSession, create_app
from ember.evaluation.outputs import write_jsonl

PROMPTS = [("p1", "math", "1+1等于几？"), ("p2", "math", "2+2=?"), ("p3", "writing", "写一首诗"), ("p4", "writing", "Say hi")]


def make_run(run: Path) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    write_jsonl(run / "prompts.jsonl", [{"id": i, "prompt": p, "category": c, "reference": None} for i, c, p in PROMPTS])
    for side in ("a", "b"):
        write_jsonl(run / f"answers_{side}.jsonl",
                    [{"id": i, "prompt": p, "model": side, "answer": f"answer of {side.upper()} to {i}"} for i, _, p in PROMPTS])
    return run


def expected_outcome(session: AnnotationSession, item_id: str, choice: str) -> str:
    if choice == "tie":
        return "tie"
    shown_first = session.a_is(item_id)  # the model behind the displayed "A"
    winner = shown_first if choice == "A" else ({"a": "b", "b": "a"}[shown_first])
    return "win" if winner == "a" else "loss"


def read_verdicts(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "human.jsonl").read_text(encoding="utf-8").splitlines()]


def test_api_saves_each_verdict_and_resumes(tmp_path):
    from fastapi.testclient import TestClient

    run = make_run(tmp_path / "run")
    session = AnnotationSession(run, annotator="tester", seed=3)
    orders = {i: session.a_is(i) for i, _, _ in PROMPTS}
    assert set(orders.values()) == {"a", "b"}  # with seed 3 both orders occur among these 4 items
    client = TestClient(create_app(session))
    view = client.get("/api/next").json()
    assert view["progress"] == {"done": 0, "total": 4} and view["item"]["id"] == "p1"
    shown_a = view["item"]["answer_A"]
    assert shown_a == f"answer of {orders['p1'].upper()} to p1"  # anonymised, but in the recorded order
    assert "answer_a" not in view["item"] and "a_is" not in view["item"]
    client.post("/api/verdict", json={"id": "p1", "choice": "A"})
    client.post("/api/verdict", json={"id": "p2", "choice": "B"})
    assert client.post("/api/verdict", json={"id": "p3", "choice": "maybe"}).status_code == 422
    assert client.post("/api/verdict", json={"id": "nope", "choice": "A"}).status_code == 404
    saved = read_verdicts(run)  # on disk already, before any shutdown
    assert [(v["id"], v["choice"], v["outcome"]) for v in saved] == [
        ("p1", "A", expected_outcome(session, "p1", "A")), ("p2", "B", expected_outcome(session, "p2", "B"))]
    resumed = AnnotationSession(run, seed=3)  # a restarted server
    assert resumed.next_view()["item"]["id"] == "p3" and resumed.progress() == {"done": 2, "total": 4}
    client = TestClient(create_app(resumed))
    client.post("/api/verdict", json={"id": "p3", "choice": "tie"})
    last = client.post("/api/verdict", json={"id": "p4", "choice": "A"}).json()
    assert last["item"] is None and last["progress"] == {"done": 4, "total": 4}
    scores = json.loads((run / "scores.json").read_text(encoding="utf-8"))  # summarized when the last pair is done
    assert scores["human/n"] == 4 and "Human annotation" in (run / "pairwise.md").read_text(encoding="utf-8")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path):
    import uvicorn

    run = make_run(tmp_path / "run")
    session = AnnotationSession(run, seed=1)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(session), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not srv.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/", session
    srv.should_exit = True
    thread.join(timeout=10)




@pytest.mark.browser
def test_annotate_page_in_headless_chromium(server, tmp_path, chromium):
    pytest.importorskip("playwright.sync_api")
    from playwright.sync_api import sync_playwright

    url, session = server
    run = session.run
    args = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run",
            "--disable-component-update", "--disable-sync"]

    def progress_is(page, text):
        page.wait_for_function(f"() => document.getElementById('progress').textContent === {json.dumps(text)}")

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True, args=args)
        page = browser.new_page(viewport={"width": 1100, "height": 750})
        page.goto(url)
        progress_is(page, "0 / 4 done")
        assert page.locator("#prompt").inner_text() == "1+1等于几？"
        shown = page.locator("#answer-a").inner_text()
        assert shown == f"answer of {session.a_is('p1').upper()} to p1"
        page.get_by_role("button", name="Win A").click()
        progress_is(page, "1 / 4 done")
        assert page.locator("#prompt").inner_text() == "2+2=?"
        page.keyboard.press("b")  # keyboard shortcut for "Win B"
        progress_is(page, "2 / 4 done")
        page.get_by_role("button", name="Tie").click()
        progress_is(page, "3 / 4 done")
        saved = read_verdicts(run)  # written before the page moved on
        assert [(v["id"], v["choice"], v["outcome"]) for v in saved] == [
            ("p1", "A", expected_outcome(session, "p1", "A")),
            ("p2", "B", expected_outcome(session, "p2", "B")),
            ("p3", "tie", "tie"),
        ]
        page.reload()  # resumes at the first pair without a verdict
        progress_is(page, "3 / 4 done")
        assert page.locator("#prompt").inner_text() == "Say hi"
        page.screenshot(path=str(tmp_path / "annotate.png"), full_page=True)
        page.keyboard.press("ArrowLeft")
        page.wait_for_selector("#done", state="visible")
        browser.close()
    assert len(read_verdicts(run)) == 4
    assert (tmp_path / "annotate.png").stat().st_size > 10_000
