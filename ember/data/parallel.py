"""Encode conversations in `data.num_proc` worker processes (order kept, reports merged)."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Any

from ember.config.schema import DataConfig
from ember.data.conversation import Conversation
from ember.data.render import Encoded, Renderer
from ember.data.report import DataReport

# Set once per worker by `_init`: shipping the renderer (its tokenizer pickles to ~1.5 MB) with every chunk would
# cost more than the encoding of small samples.
_WORKER: dict[str, Any] = {}


def _init(renderer: Renderer, data: DataConfig) -> None:
    _WORKER["renderer"], _WORKER["data"] = renderer, data


def _work(convs: list[Conversation]) -> tuple[list[Encoded], DataReport]:
    from ember.data.pipeline import encode_conversations

    report = DataReport()
    return encode_conversations(convs, _WORKER["renderer"], _WORKER["data"], report, progress=False), report


def encode_parallel(convs: list[Conversation], renderer: Renderer, data: DataConfig, report: DataReport,
                    progress: bool = True) -> list[Encoded]:
    from tqdm.auto import tqdm

    size = max(64, len(convs) // (data.num_proc * 8))
    chunks = [convs[i: i + size] for i in range(0, len(convs), size)]
    out: list[Encoded] = []
    with ProcessPoolExecutor(max_workers=data.num_proc, initializer=_init, initargs=(renderer, data)) as pool, \
            tqdm(total=len(convs), desc="tokenizing", unit="sample", disable=not progress) as bar:
        for chunk, (encoded, part) in zip(chunks, pool.map(_work, chunks), strict=True):
            out.extend(encoded)
            report.dropped_too_long += part.dropped_too_long
            report.dropped_nothing_to_train += part.dropped_nothing_to_train
            report.skipped_records.extend(part.skipped_records)
            report.warnings.extend(part.warnings)
            bar.update(len(chunk))
    return out
