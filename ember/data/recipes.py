"""How a stage's records become training samples. The pipeline (ember.data.pipeline) reads, selects, parallelises
and stores; a recipe says what a record is, how a batch of records is encoded, and what a finished sample looks like.
Training stages (ember.training.stages) name their recipe, so the pipeline never tests a stage's name.

`ChatRecipe`: conversations → rendered ids and labels, fitted to max_length (sft).
`TextRecipe`: raw text → documents tokenised in parallel, then cut into blocks in one ordered pass (pt).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa

from ember.config.schema import DataConfig, DatasetSpec
from ember.data.conversation import Conversation
from ember.data.formats import convert, detect_format
from ember.data.pretrain import BlockCutter
from ember.data.render import Encoded, RenderError, Renderer
from ember.data.report import DataReport
from ember.data.store import (CONVERSATION_SCHEMA, SAMPLE_SCHEMA, TEXT_SCHEMA, TOKENS_SCHEMA, ArrowWriter, Rows,
                              Samples, conversation_row, read_table, row_conversation, sample_row)
from ember.data.tokenize import encode_plain_batch
from ember.data.truncation import fit_samples
from ember.errors import DataError

ENCODE_BATCH = 256  # conversations tokenised per fast-tokenizer call


@dataclass
class EncodeContext:
    """What a worker needs to encode records (sent to each worker process once)."""

    tokenizer: Any
    renderer: Optional[Renderer]
    data: DataConfig


class Recipe:
    """The interface a stage's data recipe implements."""

    name = "recipe"
    unit = "record"  # what the encoding progress bar counts
    record_schema: pa.Schema
    shard_schema: pa.Schema = SAMPLE_SCHEMA  # what `encode` writes; `finish` turns shards into sample files

    def samples(self, paths: Sequence[Path], keep: Optional[object] = None) -> Rows:
        """The finished sample files, read memory-mapped (`keep`: what must live as long as they do)."""
        return Samples(paths, keep)

    def detect(self, record: dict[str, Any], source: str) -> str:
        raise NotImplementedError

    def convert(self, fmt: str, record: dict[str, Any], source: str, spec: DatasetSpec, data: DataConfig) -> Any:
        raise NotImplementedError

    def record_row(self, record: Any) -> dict[str, Any]:
        raise NotImplementedError

    def row_record(self, row: dict[str, Any]) -> Any:
        raise NotImplementedError

    def encode(self, records: Sequence[Any], ctx: EncodeContext, report: DataReport) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def finish(self, shards: Sequence[Path], out_dir: Path, split: str, ctx: EncodeContext,
               report: DataReport) -> list[Path]:
        """Turn the encoded shards (in order) into sample files; by default they already are samples."""
        return list(shards)

    def stop_token_ids(self, ctx: EncodeContext) -> list[int]:
        raise NotImplementedError


def _detect(record: dict[str, Any], source: str) -> str:
    try:
        return detect_format(record)
    except ValueError as exc:
        raise DataError(source, None, str(exc)) from None


class ChatRecipe(Recipe):
    name = "chat"
    unit = "conv"
    record_schema = CONVERSATION_SCHEMA

    def detect(self, record: dict[str, Any], source: str) -> str:
        return _detect(record, source)

    def convert(self, fmt: str, record: dict[str, Any], source: str, spec: DatasetSpec, data: DataConfig) -> Conversation:
        if fmt == "text":
            raise DataError(source, None, "raw text ({text}) has no dialogue to fine-tune on; use stage: pt")
        return convert(fmt, record, source, spec.columns, spec.system or data.system)

    def record_row(self, record: Conversation) -> dict[str, Any]:
        return conversation_row(record)

    def row_record(self, row: dict[str, Any]) -> Conversation:
        return row_conversation(row)

    def stop_token_ids(self, ctx: EncodeContext) -> list[int]:
        assert ctx.renderer is not None
        return ctx.renderer.stop_token_ids

    def truncation(self, conv: Conversation, data: DataConfig) -> str:
        """How this conversation is fitted to max_length (a subclass may choose per conversation)."""
        return data.truncation

    def sample_row(self, sample: Encoded) -> dict[str, Any]:
        return sample_row(sample)

    def encode(self, records: Sequence[Conversation], ctx: EncodeContext, report: DataReport) -> Iterator[dict[str, Any]]:
        renderer, data = ctx.renderer, ctx.data
        assert renderer is not None
        pad, stops = ctx.tokenizer.pad_token_id, set(renderer.stop_token_ids)
        for begin in range(0, len(records), ENCODE_BATCH):
            part = records[begin: begin + ENCODE_BATCH]
            for conv, enc in _encode_each(renderer, part, data, report):
                try:  # fitting renders shortened conversations, which the template may refuse too
                    fitted = fit_samples(renderer, conv, enc, self.truncation(conv, data), data.max_length, data.mask)
                except (RenderError, RecursionError) as exc:
                    record_error(conv.source, exc, data, report)
                    continue
                report.count_answers(fitted.answer_tokens, fitted.lost)
                if not fitted.samples:
                    report.dropped_too_long += 1
                    report.skip_sample(conv.source, f"longer than max_length={data.max_length}")
                    continue
                if not any(s.trained_tokens for s in fitted.samples):
                    report.dropped_nothing_to_train += 1
                    report.warn(f"{conv.source}: nothing to train in this sample (all labels are -100)")
                    continue
                report.kept_records += 1
                report.split_into += len(fitted.samples) - 1
                for sample in fitted.samples:
                    if not sample.trained_tokens:
                        continue
                    for warning in enc.warnings if sample is enc else sample.warnings:
                        report.warn(warning)
                    if pad is not None and pad not in stops and pad in sample.labels:  # pad ids are never IGNORE_INDEX
                        report.warn(f"{sample.source}: the pad token ({ctx.tokenizer.pad_token}) is trained in the labels")
                    report.add_sample(sample)
                    yield self.sample_row(sample)


def _encode_each(renderer: Renderer, convs: Sequence[Conversation], data: DataConfig,
                 report: DataReport) -> list[tuple[Conversation, Encoded]]:
    """(conversation, Encoded) for each conversation the chat template renders. One it cannot render (a Jinja
    `raise_exception` on its roles or content, values the template chokes on) is that record's error, named by
    file:line: strict stops on it, skip counts it and goes on."""
    try:
        return list(zip(convs, renderer.encode_batch(convs, data.mask), strict=True))
    except (RenderError, RecursionError):
        pass  # find the record(s): one at a time
    out = []
    for conv in convs:
        try:
            out.append((conv, renderer.encode(conv, data.mask)))
        except (RenderError, RecursionError) as exc:
            record_error(conv.source, exc, data, report)
    return out


def record_error(source: str, exc: Exception, data: DataConfig, report: DataReport) -> None:
    """A record the chat template could not render (`exc`: a RenderError or RecursionError): raise its DataError
    (strict) or count it as skipped."""
    error = DataError(source, None, str(exc) if isinstance(exc, RenderError) else
                      "nested too deeply for the chat template to render")
    if data.on_error == "strict":
        raise error from None
    report.skip(error.source, error.problem, error.reason)


class TextRecipe(Recipe):
    """Continued pretraining: documents joined with EOS into one stream, cut into max_length blocks in file order."""

    name = "text"
    unit = "doc"
    record_schema = TEXT_SCHEMA
    shard_schema = TOKENS_SCHEMA

    def detect(self, record: dict[str, Any], source: str) -> str:
        return "text" if "text" in record else _detect(record, source)

    def convert(self, fmt: str, record: dict[str, Any], source: str, spec: DatasetSpec, data: DataConfig) -> str:
        if fmt != "text":
            raise DataError(source, None, f"stage pt reads raw text ({{text}} records or .txt), but this is '{fmt}' data")
        return convert("text", record, source, spec.columns)

    def record_row(self, record: str) -> dict[str, Any]:
        return {"text": record}

    def row_record(self, row: dict[str, Any]) -> str:
        return row["text"]

    def stop_token_ids(self, ctx: EncodeContext) -> list[int]:
        return [ctx.tokenizer.eos_token_id]

    def encode(self, records: Sequence[str], ctx: EncodeContext, report: DataReport) -> Iterator[dict[str, Any]]:
        docs = [text for text in records if text]
        report.kept_records += len(docs)
        report.dropped_empty_text += len(records) - len(docs)
        for begin in range(0, len(docs), ENCODE_BATCH):
            for ids in encode_plain_batch(ctx.tokenizer, docs[begin: begin + ENCODE_BATCH]):
                yield {"input_ids": ids}

    def finish(self, shards: Sequence[Path], out_dir: Path, split: str, ctx: EncodeContext,
               report: DataReport) -> list[Path]:
        path = out_dir / f"{split}-blocks.arrow"
        cutter = BlockCutter.for_documents(ctx.tokenizer, ctx.data.max_length, split)
        with ArrowWriter(path, SAMPLE_SCHEMA) as writer:
            for shard in shards:
                for batch in read_table([shard], TOKENS_SCHEMA).to_batches(max_chunksize=256):
                    for ids in batch.column("input_ids").to_pylist():
                        for block in cutter.add_document(ids):
                            report.add_sample(block)
                            writer.write(sample_row(block))
            for block in cutter.close():
                report.add_sample(block)
                writer.write(sample_row(block))
        for shard in shards:
            shard.unlink()
        return [path]


CHAT = ChatRecipe()
TEXT = TextRecipe()

