"""Config → the exact training samples: read files, convert, sample, split, encode (in parallel), store.

Memory stays bounded whatever the dataset's size: records stream from the files into an Arrow file, selection
(samples / ratio / shuffle / eval split) works on row numbers, encoding runs on chunks of rows in `data.num_proc`
processes that each write their own Arrow shard, and the result is read back memory-mapped. The stage's recipe
(ember.data.recipes) says what a record is and how it is encoded; nothing here depends on which stage runs.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import os
import random
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ember.config.schema import DataConfig, DatasetSpec
from ember.data.files import data_files, iter_file, iter_records, looks_like_hub_id
from ember.data.recipes import EncodeContext, Recipe
from ember.data.render import Renderer
from ember.data.report import DataReport, NothingToTrain, tokenizer_warnings
from ember.data.store import ArrowWriter, MappedTable, Rows, read_table, take_rows
from ember.errors import DataError

log = logging.getLogger(__name__)

TASK_ROWS = 4096  # most records one encoding task (one shard file) holds
MIN_ROWS_PER_PROCESS = 128  # below this many records per process, starting processes costs more than it saves
# (measured: 1,000 single-turn Alpaca-zh records encode 1.3x faster in 2 processes than in 1)


@dataclass
class ProcessedData:
    train: Rows  # the recipe's samples: `Samples` (pt, sft), pairs or KTO samples (preference stages)
    eval: Rows
    report: DataReport


@dataclass
class Records:
    """Converted records of one split, in memory (tests and small tools; training streams through `process`)."""

    train: list[Any] = field(default_factory=list)
    eval: list[Any] = field(default_factory=list)


def num_processes(data: DataConfig) -> int:
    if data.num_proc:
        return data.num_proc
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


# -- reading ----------------------------------------------------------------------------------------------------------
def _sources(spec: DatasetSpec, data: DataConfig, progress=None):
    """(file or hub id, record iterator) for each file behind a dataset entry: formats are detected per file.
    `progress` is told the bytes read from local files."""
    if not Path(spec.path).exists() and looks_like_hub_id(spec.path):
        yield spec.path, iter_records(spec.path, spec.hub_split, spec.subset, spec.streaming, data.max_record_bytes)
        return
    for f in data_files(spec.path):
        yield str(f), iter_file(f, data.max_record_bytes, progress)


def read_dataset(spec: DatasetSpec, data: DataConfig, recipe: Recipe, report: DataReport, sink, progress=None) -> int:
    """Convert every record of one dataset entry into `sink(record)`; bad ones raise (strict) or are counted and
    skipped. Returns how many records were kept."""
    kept = 0
    for _, items in _sources(spec, data, progress):
        fmt = spec.format
        for source, record in items:
            report.read += 1
            try:
                if isinstance(record, DataError):
                    raise record
                if fmt == "auto":
                    fmt = recipe.detect(record, source)
                sink(recipe.convert(fmt, record, source, spec, data))
                kept += 1
            except DataError as err:
                if data.on_error == "strict":
                    raise
                report.skip(err.source, err.problem, err.reason)
    return kept


def _select(data: DataConfig, counts: list[int], report: DataReport) -> tuple[list[int], list[int]]:
    """Row numbers (into the records of all entries, in order) of the train and eval records; the report counts the
    records that samples / ratio leave out or draw again."""
    rng = random.Random(data.seed)
    train: list[int] = []
    held: list[int] = []
    offset = 0
    for spec, count in zip(data.datasets, counts, strict=True):
        rows = list(range(offset, offset + count))
        offset += count
        if spec.samples is not None or spec.ratio is not None:
            want = spec.samples if spec.samples is not None else round(count * spec.ratio)
            rng.shuffle(rows)
            full, rest = divmod(want, len(rows)) if rows else (0, 0)
            rows = rows * full + rows[:rest]  # ratio > 1 repeats the whole set, then a shuffled part
            report.not_sampled += max(0, count - len(rows))
            report.repeated += max(0, len(rows) - count)
        (held if spec.split == "eval" else train).extend(rows)
    if data.shuffle:
        rng.shuffle(train)
    if data.eval_split > 0 and train:
        n_eval = max(1, round(len(train) * data.eval_split))
        held.extend(train[:n_eval])
        train = train[n_eval:]
    return train, held


def _read_all(data: DataConfig, recipe: Recipe, report: DataReport, work: Path, progress: bool) -> tuple[list[Path], list[int]]:
    paths, counts = [], []
    size = _local_bytes(data) if progress else None
    # Local files: a bar of bytes against their total, moving inside one big file too; the hub: records read.
    bar = (_progress(size, "reading", "B", progress, bytes_=True) if size is not None
           else _progress(None, "reading", "record", progress))
    for k, spec in enumerate(data.datasets):
        path = work / f"records-{k:03d}.arrow"
        with ArrowWriter(path, recipe.record_schema) as writer:
            def sink(record, writer=writer):
                writer.write(recipe.record_row(record))
                if size is None:
                    bar.update(1)

            counts.append(read_dataset(spec, data, recipe, report, sink, bar.update if size is not None else None))
        paths.append(path)
    bar.close()
    return paths, counts


def _local_bytes(data: DataConfig) -> Optional[int]:
    """The size of every file the entries name, or None when one is a hub id (whose size is not known up front)."""
    total = 0
    for spec in data.datasets:
        if not Path(spec.path).exists() and looks_like_hub_id(spec.path):
            return None
        total += sum(f.stat().st_size for f in data_files(spec.path))
    return total


def load_records(data: DataConfig, recipe: Recipe, report: DataReport) -> Records:
    """All selected records in memory, converted (for tests and small tools)."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="ember-records-") as tmp:
        paths, counts = _read_all(data, recipe, report, Path(tmp), progress=False)
        table = read_table(paths, recipe.record_schema)
        train, held = _select(data, counts, report)
        take = lambda rows: [recipe.row_record(r) for r in table.take(rows).to_pylist()] if rows else []  # noqa: E731
        out = Records(take(train), take(held))
        del table
    return out


# -- encoding ---------------------------------------------------------------------------------------------------------
# One per worker process, set by `_init` (with fork, inherited without pickling the tokenizer).
_WORKER: dict[str, Any] = {}


def _init(recipe: Recipe, ctx: EncodeContext, record_paths: list[Path]) -> None:
    _WORKER.update(recipe=recipe, ctx=ctx, paths=record_paths)


def _encode_task(rows: list[int], shard: Path) -> tuple[Path, DataReport]:
    w = _WORKER
    recipe: Recipe = w["recipe"]
    # The records are memory-mapped anew for each task and unmapped after it, and each record batch's pages are
    # handed back once its rows are taken: (shuffled) rows touch pages all over the file, and a worker that kept
    # them would hold about the whole file resident (see MappedTable).
    mapped = MappedTable(w["paths"], recipe.record_schema)
    records = [recipe.row_record(r) for r in take_rows(mapped.table, rows, mapped.release)]
    del mapped
    report = DataReport()
    with ArrowWriter(shard, recipe.shard_schema) as writer:
        for row in recipe.encode(records, w["ctx"], report):
            writer.write(row)
    return shard, report


def _encode(rows: list[int], split: str, recipe: Recipe, ctx: EncodeContext, record_paths: list[Path], work: Path,
            report: DataReport, progress: bool) -> list[Path]:
    if ctx.data.num_proc:  # asked for: honoured (up to one process per task)
        processes = ctx.data.num_proc
    else:
        processes = min(num_processes(ctx.data), max(1, len(rows) // MIN_ROWS_PER_PROCESS))
    size = max(64, min(TASK_ROWS, math.ceil(len(rows) / (processes * 4))))
    tasks = [(rows[i: i + size], work / f"{split}-{i // size:05d}.arrow") for i in range(0, len(rows), size)]
    processes = min(processes, len(tasks))
    shards: list[Optional[Path]] = [None] * len(tasks)
    bar = _progress(len(rows), f"encoding {split}", recipe.unit, progress and bool(rows))
    if processes <= 1:
        _init(recipe, ctx, record_paths)
        for k, task in enumerate(tasks):
            shards[k], part = _encode_task(*task)
            report.merge(part)
            bar.update(len(task[0]))
    else:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(processes, multiprocessing.get_context(method), initializer=_init,
                                 initargs=(recipe, ctx, record_paths)) as pool:
            futures = {pool.submit(_encode_task, *task): k for k, task in enumerate(tasks)}
            parts: dict[int, DataReport] = {}
            for future in as_completed(futures):
                k = futures[future]
                shards[k], parts[k] = future.result()
                bar.update(len(tasks[k][0]))
        for k in range(len(tasks)):  # merged in task order, so listed warnings read like one process wrote them
            report.merge(parts[k])
    bar.close()
    _WORKER.clear()
    return recipe.finish([s for s in shards if s is not None], work, split, ctx, report)


def _progress(total: Optional[int], desc: str, unit: str, enabled: bool, bytes_: bool = False):
    from tqdm.auto import tqdm

    quiet = not enabled or os.environ.get("EMBER_NO_PROGRESS") == "1"
    # Shown only for work that takes a while: a bar that flashes by on a small file is noise in the output.
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, delay=2.0, mininterval=1.0, smoothing=0.1,
                unit_scale=bytes_, unit_divisor=1024 if bytes_ else 1000)


def process(data: DataConfig, recipe: Recipe, tokenizer, renderer: Optional[Renderer], out_dir: Path,
            progress: bool = True) -> ProcessedData:
    """Build train/eval samples exactly as training will see them into `out_dir` (no cache; see
    `ember.data.cache`)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    report = DataReport()
    for warning in tokenizer_warnings(tokenizer):
        report.warn(warning)
    record_paths, counts = _read_all(data, recipe, report, out_dir, progress)
    train_rows, eval_rows = _select(data, counts, report)
    ctx = EncodeContext(tokenizer, renderer, data)
    train_report, eval_report = DataReport(), DataReport()
    train_files = _encode(train_rows, "train", recipe, ctx, record_paths, out_dir, train_report, progress)
    eval_files = _encode(eval_rows, "eval", recipe, ctx, record_paths, out_dir, eval_report, False)
    for path in record_paths:
        path.unlink()
    report.merge(train_report)
    report.merge(eval_report)
    train, held = recipe.samples(train_files), recipe.samples(eval_files)
    report.train_samples, report.eval_samples = len(train), len(held)
    report.kept = len(train) + len(held)
    report.set_lengths(train.lengths() + held.lengths())
    if report.trained_tokens == 0:
        error = DataError(", ".join(s.path for s in data.datasets), None, zero_trainable_message(report, data))
        raise NothingToTrain(error, report)
    return ProcessedData(train, held, report)


def zero_trainable_message(report: DataReport, data: DataConfig) -> str:
    counts = [f"{report.read} records read", f"{sum(report.skipped.values())} skipped as invalid",
              f"{report.dropped_too_long} dropped as longer than max_length={data.max_length}",
              f"{report.dropped_nothing_to_train} with nothing to train (mask: {data.mask})"]
    if report.answer_tokens:
        lost = ", ".join(f"{n} {reason}" for reason, n in report.answer_tokens_lost.items() if n)
        counts.append(f"answer tokens: {report.answer_tokens} before truncation" + (f", lost: {lost}" if lost else ""))
    return ("the dataset has zero trainable tokens after processing (" + "; ".join(counts) + "). Check mask, "
            "max_length, truncation and the skip report")
