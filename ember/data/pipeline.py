"""Config → the exact training samples: read files, convert, sample, split, render, truncate, lint, cache."""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from typing import Any, Optional

from ember.config.schema import DataConfig, DatasetSpec
from ember.data.conversation import Conversation
from ember.data.files import iter_records
from ember.data.formats import convert, detect_format
from ember.data.pretrain import encode_documents
from ember.data.render import Encoded, Renderer
from ember.data.report import DataReport, lint
from ember.data.truncation import fit, has_trained
from ember.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Records:
    """Converted records of one split: conversations (sft) or documents (pt)."""

    train: list[Any] = field(default_factory=list)
    eval: list[Any] = field(default_factory=list)


@dataclass
class ProcessedData:
    train: list[Encoded]
    eval: list[Encoded]
    report: DataReport
    records: Records


def read_dataset(spec: DatasetSpec, data: DataConfig, stage: str, report: DataReport) -> list[Any]:
    """All records of one dataset entry, converted; bad ones raise (strict) or are counted and skipped."""
    out: list[Any] = []
    fmt = spec.format
    for source, record in iter_records(spec.path, spec.hub_split, spec.subset):
        report.read += 1
        try:
            if isinstance(record, DataError):
                raise record
            if fmt == "auto":
                try:
                    fmt = "text" if stage == "pt" and "text" in record else detect_format(record)
                except ValueError as exc:
                    raise DataError(source, None, str(exc)) from None
            if stage == "pt" and fmt != "text":
                raise DataError(source, None, f"stage pt reads raw text ({{text}} records or .txt), but this is '{fmt}' data")
            if stage == "sft" and fmt == "text":
                raise DataError(source, None, "raw text ({text}) has no dialogue to fine-tune on; use stage: pt")
            out.append(convert(fmt, record, source, spec.columns, spec.system or data.system))
        except DataError as err:
            if data.on_error == "strict":
                raise
            report.skip(err.source, err.problem, err.reason)
    return out


def sample_records(records: list[Any], spec: DatasetSpec, rng: random.Random) -> list[Any]:
    if spec.samples is None and spec.ratio is None:
        return records
    want = spec.samples if spec.samples is not None else round(len(records) * spec.ratio)
    pool = list(records)
    rng.shuffle(pool)
    full, rest = divmod(want, len(pool)) if pool else (0, 0)
    return pool * full + pool[:rest]  # ratio > 1 repeats the whole set, then a shuffled part


def load_records(data: DataConfig, stage: str, report: DataReport) -> Records:
    rng = random.Random(data.seed)
    train: list[Any] = []
    held: list[Any] = []
    for spec in data.datasets:
        items = sample_records(read_dataset(spec, data, stage, report), spec, rng)
        (held if spec.split == "eval" else train).extend(items)
    if data.shuffle:
        rng.shuffle(train)
    if data.eval_split > 0 and train:
        n_eval = max(1, round(len(train) * data.eval_split))
        held.extend(train[:n_eval])
        train = train[n_eval:]
    return Records(train, held)


def encode_conversations(convs: list[Conversation], renderer: Renderer, data: DataConfig, report: DataReport,
                         progress: bool = True) -> list[Encoded]:
    out: list[Encoded] = []
    chunk = 64
    bar = _progress(len(convs), "tokenizing", progress)
    for begin in range(0, len(convs), chunk):
        part = convs[begin: begin + chunk]
        for conv, enc in zip(part, renderer.encode_batch(part, data.mask), strict=True):
            fitted = fit(renderer, conv, enc, data.truncation, data.max_length, data.mask)
            if fitted is None:
                report.dropped_too_long += 1
                report.skipped_records.append({"source": conv.source, "reason": f"longer than max_length={data.max_length}"})
                continue
            if not has_trained(fitted):
                report.dropped_nothing_to_train += 1
                report.warnings.append(f"{conv.source}: nothing to train in this sample (all labels are -100)")
                continue
            out.append(fitted)
        bar.update(len(part))
    bar.close()
    return out


def _progress(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="sample", disable=not enabled or total < 256)


def process(data: DataConfig, stage: str, tokenizer, renderer: Optional[Renderer], progress: bool = True) -> ProcessedData:
    """Build train/eval samples exactly as training will see them (no cache; see `ember.data.cache`)."""
    report = DataReport()
    records = load_records(data, stage, report)
    if stage == "pt":
        train = encode_documents(tokenizer, records.train, data.max_length, "train")
        held = encode_documents(tokenizer, records.eval, data.max_length, "eval") if records.eval else []
    else:
        assert renderer is not None
        if data.num_proc > 1 and len(records.train) > 256:
            from ember.data.parallel import encode_parallel

            train = encode_parallel(records.train, renderer, data, report, progress)
        else:
            train = encode_conversations(records.train, renderer, data, report, progress)
        held = encode_conversations(records.eval, renderer, data, report, progress=False)
    report.kept = len(train) + len(held)
    report.train_samples, report.eval_samples = len(train), len(held)
    report.add_samples(train + held)
    # pt joins documents with EOS and trains it on purpose, so an EOS that doubles as pad (SmolLM2) is no finding.
    stops = renderer.stop_token_ids if renderer else [tokenizer.eos_token_id]
    report.warnings.extend(lint(train + held, tokenizer, stops))
    if report.trained_tokens == 0:
        names = ", ".join(s.path for s in data.datasets)
        raise DataError(names, None, "the dataset has zero trainable tokens after processing (check mask, "
                                     "max_length and the skip report)")
    return ProcessedData(train, held, report, records)
