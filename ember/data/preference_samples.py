"""Preference training samples and their Arrow storage (the store.py layout: one row per sample, read memory-mapped).

A pair is two encodings of one prompt: `chosen` and `rejected` each hold prompt + answer ids and labels (-100 on
the prompt and on template text after the answer's end-of-turn token); their first `prompt_length` ids are the same
and equal `tokenizer.apply_chat_template(prompt, add_generation_prompt=True)`. A KTO sample is one such encoding and
its label (desirable or not).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa

from ember.data.render import Encoded
from ember.data.store import Rows

_IDS = pa.list_(pa.int32())
_COMMON = [("prompt_length", pa.int32()), ("length", pa.int32()), ("trained", pa.int32()),
           ("turns_dropped", pa.int32()), ("truncated", pa.bool_())]
PAIR_SAMPLE_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("chosen_input_ids", _IDS), ("chosen_labels", _IDS),
    ("rejected_input_ids", _IDS), ("rejected_labels", _IDS),
    *_COMMON,
])
KTO_SAMPLE_SCHEMA = pa.schema([
    ("source", pa.string()),
    ("input_ids", _IDS), ("labels", _IDS), ("label", pa.bool_()),
    *_COMMON,
])


@dataclass
class PairSample:
    chosen: Encoded
    rejected: Encoded
    prompt_length: int

    @property
    def source(self) -> str:
        return self.chosen.source

    @property
    def trained_tokens(self) -> int:
        return self.chosen.trained_tokens + self.rejected.trained_tokens

    @property
    def length(self) -> int:
        """The longer row: what `data.max_length` bounds."""
        return max(len(self.chosen.input_ids), len(self.rejected.input_ids))


@dataclass
class KTOSample:
    encoded: Encoded
    label: bool
    prompt_length: int

    @property
    def source(self) -> str:
        return self.encoded.source

    @property
    def trained_tokens(self) -> int:
        return self.encoded.trained_tokens

    @property
    def length(self) -> int:
        return len(self.encoded.input_ids)


def pair_sample_row(pair: PairSample) -> dict[str, Any]:
    c, r = pair.chosen, pair.rejected
    return {"source": c.source, "chosen_input_ids": c.input_ids, "chosen_labels": c.labels,
            "rejected_input_ids": r.input_ids, "rejected_labels": r.labels, "prompt_length": pair.prompt_length,
            "length": pair.length, "trained": pair.trained_tokens, "turns_dropped": c.turns_dropped,
            "truncated": c.truncated}


def row_pair_sample(row: dict[str, Any]) -> PairSample:
    def enc(side: str) -> Encoded:
        return Encoded(row[f"{side}_input_ids"], row[f"{side}_labels"], row["source"], None, row["turns_dropped"],
                       row["truncated"])

    return PairSample(enc("chosen"), enc("rejected"), row["prompt_length"])


def kto_sample_row(sample: KTOSample) -> dict[str, Any]:
    e = sample.encoded
    return {"source": e.source, "input_ids": e.input_ids, "labels": e.labels, "label": sample.label,
            "prompt_length": sample.prompt_length, "length": sample.length, "trained": sample.trained_tokens,
            "turns_dropped": e.turns_dropped, "truncated": e.truncated}


def row_kto_sample(row: dict[str, Any]) -> KTOSample:
    return KTOSample(Encoded(row["input_ids"], row["labels"], row["source"], None, row["turns_dropped"],
                             row["truncated"]), row["label"], row["prompt_length"])


class _PreferenceSamples(Rows):
    """Stored preference samples; pickled (into DataLoader workers) as their file paths."""

    schema: pa.Schema
    convert: Any

    def __init__(self, paths: Sequence[Path], keep: Optional[object] = None):
        super().__init__(paths, self.schema, type(self).convert, keep)

    def lengths(self) -> list[int]:
        return self.column("length")

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths}

    def __setstate__(self, state: dict[str, Any]) -> None:
        type(self).__init__(self, state["paths"])


class PairSamples(_PreferenceSamples):
    schema = PAIR_SAMPLE_SCHEMA
    convert = staticmethod(row_pair_sample)


class KTOSamples(_PreferenceSamples):
    schema = KTO_SAMPLE_SCHEMA
    convert = staticmethod(row_kto_sample)
