"""Show what will be trained: rendered samples with trained spans highlighted, a summary and lints."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import IO

from ember.data.pipeline import ProcessedData
from ember.data.preference_samples import KTOSample, PairSample
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

    def show(enc: Encoded, start: int = 0) -> None:
        # soft_wrap: never insert line breaks into sample text or into file:line messages (the output may be piped)
        part = Encoded(enc.input_ids[start:], enc.labels[start:], enc.source)
        if color:
            text = Text()
            for trained, ids in spans(part):
                text.append(tokenizer.decode(ids), style="bold green" if trained else "dim")
            console.print(text, soft_wrap=True)
        else:
            console.print(plain_text(part, tokenizer), markup=False, soft_wrap=True)

    for sample in result.train[:n]:
        if isinstance(sample, Encoded):
            console.rule(f"{sample.source}  ({len(sample.input_ids)} tokens, {sample.trained_tokens} trained)")
            show(sample)
            continue
        # Preference samples: the prompt once (its ids are the same in every row), then each answer after it.
        rows = ([("chosen", sample.chosen), ("rejected", sample.rejected)] if isinstance(sample, PairSample)
                else [("desirable" if sample.label else "undesirable", sample.encoded)])
        console.rule(f"{sample.source}  (prompt {sample.prompt_length} tokens; "
                     + ", ".join(f"{name} {len(e.input_ids) - sample.prompt_length} tokens, {e.trained_tokens} trained"
                                 for name, e in rows) + ")")
        console.print("prompt:", style="bold", markup=False)
        console.print(tokenizer.decode(rows[0][1].input_ids[:sample.prompt_length]), markup=False, soft_wrap=True,
                      style="dim" if color else None)
        for name, enc in rows:
            console.print(f"{name}:", style="bold", markup=False)
            show(enc, sample.prompt_length)
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


def export_row(sample) -> dict:
    """A sample as exported: `source, input_ids, labels` (+ `weights` if any); preference pairs: `source,
    chosen_input_ids, chosen_labels, rejected_input_ids, rejected_labels`; KTO: `source, input_ids, labels, label`."""
    if isinstance(sample, PairSample):
        return {"source": sample.source, "chosen_input_ids": sample.chosen.input_ids,
                "chosen_labels": sample.chosen.labels, "rejected_input_ids": sample.rejected.input_ids,
                "rejected_labels": sample.rejected.labels}
    if isinstance(sample, KTOSample):
        return {"source": sample.source, "input_ids": sample.encoded.input_ids, "labels": sample.encoded.labels,
                "label": sample.label}
    row = {"source": sample.source, "input_ids": sample.input_ids, "labels": sample.labels}
    if sample.weights:
        row["weights"] = sample.weights
    return row


def export_jsonl(result: ProcessedData, path: str | Path, include_eval: bool = True) -> int:
    """One JSON object per training sample (`export_row`, plus its split); labels are -100 where not trained."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for split, samples in (("train", result.train), ("eval", result.eval if include_eval else [])):
            for sample in samples:
                row = export_row(sample)
                row["split"] = split
                f.write(json.dumps(row) + "\n")
                count += 1
    return count
