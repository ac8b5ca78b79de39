"""Show what will be trained: rendered samples with trained spans highlighted, a summary and lints."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO

from ember.data.pipeline import ProcessedData
from ember.data.render import IGNORE_INDEX, Encoded

PLAIN_OPEN, PLAIN_CLOSE = "[[", "]]"  # trained-span markers when the output is not a terminal


def spans(enc: Encoded) -> list[tuple[bool, list[int]]]:
    """Consecutive runs of (trained?, token ids)."""
    runs: list[tuple[bool, list[int]]] = []
    for tok, lab in zip(enc.input_ids, enc.labels, strict=True):
        trained = lab != IGNORE_INDEX
        if runs and runs[-1][0] == trained:
            runs[-1][1].append(tok)
        else:
            runs.append((trained, [tok]))
    return runs


def plain_text(enc: Encoded, tokenizer) -> str:
    return "".join(
        (PLAIN_OPEN + tokenizer.decode(ids) + PLAIN_CLOSE) if trained else tokenizer.decode(ids)
        for trained, ids in spans(enc)
    )


def print_preview(result: ProcessedData, tokenizer, n: int = 3, stream: IO[str] | None = None, color: bool | None = None) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    stream = stream or sys.stdout
    color = stream.isatty() if color is None else color
    console = Console(file=stream, force_terminal=color, no_color=not color, width=120, highlight=False)
    # soft_wrap: never insert line breaks into sample text or into file:line messages (the output may be piped)
    for enc in result.train[:n]:
        console.rule(f"{enc.source}  ({len(enc.input_ids)} tokens, {enc.trained_tokens} trained)")
        if color:
            text = Text()
            for trained, ids in spans(enc):
                text.append(tokenizer.decode(ids), style="bold green" if trained else "dim")
            console.print(text, soft_wrap=True)
        else:
            console.print(plain_text(enc, tokenizer), markup=False, soft_wrap=True)
    if not color:
        console.print(f"(trained spans are marked {PLAIN_OPEN} … {PLAIN_CLOSE})")
    table = Table(title="data summary", show_header=False)
    for key, value in result.report.summary_rows():
        table.add_row(key, value)
    console.print(table)
    for record in result.report.skipped_records[:50]:
        console.print(f"skipped {record['source']}: {record['reason']}", markup=False, soft_wrap=True)
    for warning in result.report.warnings[:50]:
        console.print(f"warning: {warning}", markup=False, style="yellow", soft_wrap=True)
    if len(result.report.warnings) > 50:
        console.print(f"… {len(result.report.warnings) - 50} more warnings", markup=False)


def export_jsonl(result: ProcessedData, path: str | Path, include_eval: bool = True) -> int:
    """One JSON object per training sample: source, input_ids, labels (-100 = not trained), weights if any."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for split, samples in (("train", result.train), ("eval", result.eval if include_eval else [])):
            for enc in samples:
                row = {"source": enc.source, "split": split, "input_ids": enc.input_ids, "labels": enc.labels}
                if enc.weights:
                    row["weights"] = enc.weights
                f.write(json.dumps(row) + "\n")
                count += 1
    return count
