"""The files every eval run leaves in `--out DIR`: `scores.json` and `items.jsonl`, readable without Ember.

`scores.json` holds flat metric names mapped to numbers at the top level (`"accuracy": 41.2`, `"cmmlu/STEM": 38.0`,
`"bleu-4": 12.5`), so `json.load(f)["bleu-4"]` just works. Non-numeric sections live under the reserved keys in
`SECTIONS` (`meta`, per-`subjects` and per-`categories` breakdowns, ...). Rates and accuracies are on a 0–100 scale.
`items.jsonl` has one JSON object per scored item with everything needed to recompute the scores.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ember.core.artifacts import EVAL_SCORES as SCORES, EVAL_SECTIONS as SECTIONS
from ember.errors import EmberError

ITEMS = "items.jsonl"


def run_dir(path: str | os.PathLike) -> Path:
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise EmberError(f"--out {out} is a file; give a directory for scores.json and items.jsonl")
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_json(path: Path, obj: Any) -> None:
    """Write through a temporary file so a crash never leaves half a JSON file behind."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    tmp = path.with_name(f".{path.name}.tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    os.replace(tmp, path)
    return n


def append_jsonl(path: Path, row: dict) -> None:
    """Append one line and fsync: the row survives a crash or a killed server the moment this returns."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise EmberError(f"{path}:{lineno}: not valid JSON ({exc.msg}); fix or delete that line") from exc
    return rows


def write_run(out: Path, scores: dict[str, Any], items: Iterable[dict]) -> None:
    bad = {k: v for k, v in scores.items() if k not in SECTIONS and not isinstance(v, (int, float))}
    if bad:
        raise TypeError(f"scores.json top-level values must be numbers (or one of {SECTIONS}); got {bad}")
    out = run_dir(out)
    write_jsonl(out / ITEMS, items)
    write_json(out / SCORES, scores)


def read_scores(run: Path) -> dict[str, Any]:
    path = Path(run) / SCORES
    if not path.is_file():
        raise EmberError(f"{run} holds no {SCORES}: pass a directory written by `ember eval bench|gen|compare --out`")
    return json.loads(path.read_text(encoding="utf-8"))


def metrics_of(scores: dict[str, Any]) -> dict[str, float]:
    """The flat name → number part of a scores.json."""
    return {k: v for k, v in scores.items() if k not in SECTIONS and isinstance(v, (int, float))}


def percent(numerator: float, denominator: float) -> float:
    return round(100.0 * numerator / denominator, 4) if denominator else 0.0
