"""Batched generation where every row streams its own text and can stop on its own.

One `model.generate` call serves several rows (left-padded prompts). Each step, a stopping criterion reads the
new token of every row, turns the row's ids into text, hands the safe new part to that row's callback, and marks
the row finished on a stop token, a stop string, its own token limit or its cancel event. Stop strings are
checked on text, so a stop string split over several tokens is never half-streamed: text that could still become
a stop string is held back until it cannot.

The final text of a row is exactly what `Engine.generate` returns for the same prompt (stop token dropped,
special tokens skipped, text cut at the first stop string), and the streamed pieces of a row join to it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Optional

import torch

if TYPE_CHECKING:
    from ember.inference.engine import Completion, Engine, GenerationOptions

INCOMPLETE = "\ufffd"  # what decoding shows for a character whose UTF-8 bytes have not all arrived yet


@dataclass
class Row:
    """One sequence to generate. `limit` is this row's max_new_tokens; `stop` its stop strings."""

    prompt: list[int]
    limit: int
    stop: Sequence[str] = ()
    on_text: Optional[Callable[[str], None]] = None
    cancel: threading.Event = field(default_factory=threading.Event)
    ids: list[int] = field(default_factory=list)
    generated: int = 0  # tokens produced, the stop token included
    emitted: str = ""
    text: str = ""
    finish_reason: Optional[str] = None  # "stop", "length" or "cancelled"

    @property
    def done(self) -> bool:
        return self.finish_reason is not None


class _RowTracker:
    """Feeds each row its new token and decides, per row, whether it is finished."""

    def __init__(self, rows: Sequence[Row], tokenizer, stop_ids: set[int]):
        self.rows = rows
        self.tokenizer = tokenizer
        self.stop_ids = stop_ids

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        for row, token in zip(self.rows, input_ids[:, -1].tolist(), strict=True):
            if not row.done:
                self.accept(row, token)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)

    def accept(self, row: Row, token: int) -> None:
        if row.cancel.is_set():
            row.finish_reason = "cancelled"
            return
        row.generated += 1
        if token in self.stop_ids:
            row.finish_reason = "stop"
            return
        row.ids.append(token)
        row.text = self.tokenizer.decode(row.ids, skip_special_tokens=True)
        cut = first_stop(row.text, row.stop)
        if cut is not None:
            row.text = row.text[:cut]
            row.finish_reason = "stop"
        elif row.generated >= row.limit:
            row.finish_reason = "length"
        if not row.done:
            end = len(row.text) - held_back(row.text, row.stop)
            self.emit(row, row.text[:end])

    @staticmethod
    def emit(row: Row, upto: str) -> None:
        if len(upto) > len(row.emitted) and upto.startswith(row.emitted):
            piece, row.emitted = upto[len(row.emitted):], upto
            if row.on_text is not None:
                row.on_text(piece)


def without_unfinished_character(text: str) -> str:
    """A length limit can fall inside a multi-byte character: drop its bytes rather than show U+FFFD."""
    return text.rstrip(INCOMPLETE)


def first_stop(text: str, stops: Sequence[str]) -> Optional[int]:
    hits = [text.index(s) for s in stops if s and s in text]
    return min(hits) if hits else None


def held_back(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters must wait: an unfinished character, or the start of a stop string."""
    keep = 0
    if text.endswith(INCOMPLETE):
        keep = len(text) - len(text.rstrip(INCOMPLETE))
    for s in stops:
        for k in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:k]):
                keep = max(keep, k)
                break
    return keep


def generate_rows(engine: "Engine", rows: Sequence[Row], options: "GenerationOptions") -> list["Completion"]:
    """Run `rows` as one left-padded batch with `options` (max_new_tokens and stop come from each row)."""
    from transformers import StoppingCriteriaList

    from ember.inference.engine import Completion

    if options.num_beams != 1:
        raise ValueError("streaming rows need num_beams=1 (beam search keeps several candidates per row)")
    tokenizer = engine.tokenizer
    pad = tokenizer.pad_token_id
    width = max(len(r.prompt) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r.prompt)) + r.prompt for r in rows], device=engine.device)
    mask = torch.tensor([[0] * (width - len(r.prompt)) + [1] * len(r.prompt) for r in rows], device=engine.device)
    live = [r for r in rows if not r.cancel.is_set()]
    for r in rows:
        if r.cancel.is_set():
            r.finish_reason = "cancelled"
    if live:
        kwargs = engine._generate_kwargs(options)
        kwargs.pop("stop_strings", None)  # checked on text by the tracker, per row
        kwargs.pop("tokenizer", None)
        kwargs["max_new_tokens"] = max(r.limit for r in rows)
        tracker = _RowTracker(rows, tokenizer, set(engine.renderer.stop_token_ids) | _eos_ids(kwargs))
        with engine.lock, torch.inference_mode():
            if options.seed is not None:
                torch.manual_seed(options.seed)
            engine.model.generate(input_ids=ids, attention_mask=mask, stopping_criteria=StoppingCriteriaList([tracker]),
                                  **kwargs)
    out = []
    for r in rows:
        if r.finish_reason is None:  # generate ended first (the batch's longest limit): this row ran out too
            r.finish_reason = "length"
        if r.finish_reason == "length":
            r.text = without_unfinished_character(r.text)
        if r.finish_reason != "cancelled":
            _RowTracker.emit(r, r.text)
        out.append(Completion(r.text, len(r.prompt), r.generated, r.finish_reason))
    return out


def _eos_ids(kwargs) -> set[int]:
    eos = kwargs.get("eos_token_id")
    if eos is None:
        return set()
    return set(eos) if isinstance(eos, (list, tuple)) else {int(eos)}
