"""Human pairwise annotation: a one-page web app over a compare run directory.

The page shows one prompt and the two models' answers, anonymised as "A" and "B" in an order drawn per item (stable
across reloads and restarts, from a hash of the seed and the item id). Every click or key press is appended to
`human.jsonl` and fsynced before the next item is shown, so closing the browser or killing the server loses nothing;
the page always opens at the first item without a verdict.
"""

from __future__ import annotations

import hashlib
import json
import time
from importlib import resources
from pathlib import Path
from typing import Any, Optional

from ember.errors import EmberError
from ember.evaluation.outputs import append_jsonl, read_jsonl
from ember.evaluation.pairwise_report import HUMAN, latest_by_id, summarize_pairwise

CHOICES = ("A", "tie", "B")


class AnnotationSession:
    def __init__(self, run: Path, annotator: str = "human", seed: int = 0):
        self.run = Path(run)
        self.annotator = annotator
        self.seed = seed
        self.path = self.run / HUMAN
        self.items = _load_items(self.run)
        self.by_id = {it["id"]: it for it in self.items}
        self.done: dict[str, dict] = {}
        if self.path.is_file():
            self.done = {r["id"]: r for r in latest_by_id(read_jsonl(self.path)) if r["id"] in self.by_id}

    def a_is(self, item_id: str) -> str:
        """Which model ("a" or "b") is shown as answer A for this item."""
        digest = hashlib.sha256(f"{self.seed}:{item_id}".encode()).digest()
        return "a" if digest[0] % 2 == 0 else "b"

    def progress(self) -> dict[str, int]:
        return {"done": len(self.done), "total": len(self.items)}

    def next_view(self) -> dict[str, Any]:
        item = next((it for it in self.items if it["id"] not in self.done), None)
        view: dict[str, Any] = {"progress": self.progress(), "item": None, "file": str(self.path)}
        if item is not None:
            first, second = (item["answer_a"], item["answer_b"]) if self.a_is(item["id"]) == "a" else (item["answer_b"], item["answer_a"])
            number = self.items.index(item) + 1
            view["item"] = {"id": item["id"], "number": number, "category": item["category"],
                            "prompt": item["prompt"], "answer_A": first, "answer_B": second}
        return view

    def record(self, item_id: str, choice: str) -> dict[str, Any]:
        if item_id not in self.by_id:
            raise KeyError(item_id)
        if choice not in CHOICES:
            raise ValueError(f"choice must be one of {CHOICES}, got {choice!r}")
        shown_a = self.a_is(item_id)
        if choice == "tie":
            outcome = "tie"
        else:
            winner = shown_a if choice == "A" else ("b" if shown_a == "a" else "a")
            outcome = "win" if winner == "a" else "loss"
        rec = {"id": item_id, "category": self.by_id[item_id]["category"], "choice": choice, "a_is": shown_a,
               "outcome": outcome, "annotator": self.annotator, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        append_jsonl(self.path, rec)
        self.done[item_id] = rec
        return rec


def _load_items(run: Path) -> list[dict]:
    needed = [run / "prompts.jsonl", run / "answers_a.jsonl", run / "answers_b.jsonl"]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise EmberError(f"{run} is not a compare run (missing {', '.join(missing)}): "
                         f"run `ember eval compare --out {run} ...` first")
    prompts = read_jsonl(needed[0])
    answers = [{r["id"]: r["answer"] for r in read_jsonl(p)} for p in needed[1:]]
    items = []
    for it in prompts:
        if it["id"] in answers[0] and it["id"] in answers[1]:
            items.append({**it, "answer_a": answers[0][it["id"]], "answer_b": answers[1][it["id"]]})
    if not items:
        raise EmberError(f"{run}: no prompt has answers from both models yet")
    return items


def page_html() -> str:
    return resources.files("ember.evaluation").joinpath("annotate.html").read_text(encoding="utf-8")


def create_app(session: AnnotationSession):
    from fastapi import Body, FastAPI, HTTPException
    from fastapi.responses import HTMLResponse

    app = FastAPI(title="Ember pairwise annotation", docs_url=None, redoc_url=None)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page_html()

    @app.get("/api/next")
    def next_item() -> dict[str, Any]:
        return session.next_view()

    @app.post("/api/verdict")
    def verdict(body: dict[str, Any] = Body(...)) -> dict[str, Any]:
        # A plain dict body: a pydantic model local to this function would not resolve under postponed annotations.
        item_id, choice = str(body.get("id")), str(body.get("choice"))
        try:
            session.record(item_id, choice)
        except KeyError:
            raise HTTPException(404, f"unknown item id {item_id!r}") from None
        except ValueError as exc:
            raise HTTPException(422, str(exc)) from None
        view = session.next_view()
        if view["item"] is None:
            summarize_pairwise(session.run)  # all done: refresh scores.json and pairwise.md once
        return view

    return app


def serve(run: Path, host: str = "127.0.0.1", port: int = 8765, annotator: str = "human", seed: int = 0,
          open_browser: Optional[bool] = False) -> int:
    import uvicorn

    session = AnnotationSession(run, annotator, seed)
    p = session.progress()
    print(f"annotating {p['total']} pairs ({p['done']} done) at http://{host}:{port}/ — verdicts go to {session.path}")
    print("keys: a / 1 / ← = A is better, t / 2 / ↓ = tie, b / 3 / → = B is better. Ctrl+C stops; progress is kept.")
    if open_browser:
        import webbrowser

        webbrowser.open(f"http://{host}:{port}/")
    uvicorn.run(create_app(session), host=host, port=port, log_level="warning")
    if session.done:
        summarize_pairwise(session.run)
    print(json.dumps(session.progress()))
    return 0
