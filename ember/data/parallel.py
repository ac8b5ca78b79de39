"""Encode conversations in `data.num_proc` worker processes (order kept, reports merged)."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor

from ember.config.schema import DataConfig
from ember.data.conversation import Conversation
from ember.data.render import Encoded, Renderer
from ember.data.report import DataReport


def _work(args) -> tuple[list[Encoded], DataReport]:
    from ember.data.pipeline import encode_conversations

    convs, renderer, data = args
    report = DataReport()
    return encode_conversations(convs, renderer, data, report, progress=False), report


def encode_parallel(convs: list[Conversation], renderer: Renderer, data: DataConfig, report: DataReport) -> list[Encoded]:
    from tqdm.auto import tqdm

    size = max(64, len(convs) // (data.num_proc * 8))
    chunks = [convs[i: i + size] for i in range(0, len(convs), size)]
    out: list[Encoded] = []
    with ProcessPoolExecutor(max_workers=data.num_proc) as pool, tqdm(total=len(convs), desc="tokenizing", unit="sample") as bar:
        for chunk, (encoded, part) in zip(chunks, pool.map(_work, [(c, renderer, data) for c in chunks]), strict=True):
            out.extend(encoded)
            report.dropped_too_long += part.dropped_too_long
            report.dropped_nothing_to_train += part.dropped_nothing_to_train
            report.skipped_records.extend(part.skipped_records)
            report.warnings.extend(part.warnings)
            bar.update(len(chunk))
    return out
