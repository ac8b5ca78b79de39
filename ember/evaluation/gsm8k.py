"""GSM8K: generate an answer greedily, take its final number, compare it with the gold number (exact match).

The number read from an answer is, in order of preference: the number after `####` (the dataset's own marker), the
number after "answer is" / "答案是", otherwise the last number in the text. Numbers compare by value after removing
thousands separators, currency signs and trailing zeros ("1,000" == "1000.00" == "$1000").
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Optional

from ember.evaluation.generate import GenerateFn, generate_all
from ember.evaluation.outputs import percent, read_jsonl
from ember.errors import EmberError

INSTRUCTION = ("Solve the following math problem step by step. "
               "End your answer with a line of the form \"The answer is N\", where N is a number.\n\n")

_NUMBER = r"-?\$?\s?\d[\d,]*(?:\.\d+)?|-?\$?\s?\.\d+"
_MARKERS = [r"####\s*", r"answer is[:\s]*", r"答案是[:：\s]*", r"答案[:：]\s*"]


def normalize_number(text: str) -> Optional[str]:
    """A canonical string for a number ("1,000.50" → "1000.5"), or None when `text` is not a number."""
    cleaned = text.replace(",", "").replace("$", "").replace(" ", "").rstrip(".")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    if value == value.to_integral_value():
        return str(value.quantize(Decimal(1)))
    return format(value.normalize(), "f")


def extract_number(text: str) -> Optional[str]:
    """The final numeric answer in a model's (or the dataset's) answer text, normalized; None if it has none."""
    for marker in _MARKERS:
        hits = list(re.finditer(marker + f"({_NUMBER})", text, flags=re.IGNORECASE))
        if hits:
            return normalize_number(hits[-1].group(1))
    numbers = re.findall(_NUMBER, text)
    return normalize_number(numbers[-1]) if numbers else None


def load_gsm8k(path: str | Path, limit: Optional[int] = None) -> list[dict]:
    p = Path(path)
    if p.is_dir():
        p = p / "test.jsonl"
    if not p.is_file():
        raise EmberError(f"GSM8K file not found: {p} (expected a JSONL of {{question, answer}} such as test.jsonl)")
    rows = read_jsonl(p)
    for i, row in enumerate(rows):
        if "question" not in row or "answer" not in row:
            raise EmberError(f"{p}:{i + 1}: a GSM8K record needs 'question' and 'answer' fields; got {sorted(row)}")
    return rows[:limit] if limit is not None else rows


def gsm8k_messages(question: str) -> list[dict]:
    return [{"role": "user", "content": INSTRUCTION + question.strip()}]


def score_gsm8k(rows: list[dict], outputs: list[str]) -> tuple[dict[str, Any], list[dict]]:
    items = []
    for index, (row, output) in enumerate(zip(rows, outputs, strict=True)):
        gold = extract_number(row["answer"])
        pred = extract_number(output)
        items.append({
            "task": "gsm8k", "index": index, "prompt": gsm8k_messages(row["question"])[0]["content"],
            "output": output, "prediction": pred, "gold": gold, "correct": pred is not None and pred == gold,
        })
    correct = sum(item["correct"] for item in items)
    return {"gsm8k/accuracy": percent(correct, len(items)), "gsm8k/n": len(items)}, items


def run_gsm8k(rows: list[dict], generate: GenerateFn, batch_size: int = 8, progress: bool = True
              ) -> tuple[dict[str, Any], list[dict]]:
    conversations = [gsm8k_messages(r["question"]) for r in rows]
    return score_gsm8k(rows, generate_all(generate, conversations, batch_size, "gsm8k", progress))
