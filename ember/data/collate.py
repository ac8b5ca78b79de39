"""Batch encoded samples: right-pad ids with the pad token, labels with IGNORE_INDEX, weights with 0."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ember.data.render import IGNORE_INDEX, Encoded


class EncodedDataset(torch.utils.data.Dataset):
    """The processed samples as a torch dataset (rows are dicts the collator understands)."""

    def __init__(self, samples: list[Encoded]):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        row: dict[str, Any] = {"input_ids": s.input_ids, "labels": s.labels}
        if s.weights is not None:
            row["loss_weights"] = s.weights
        return row

    def lengths(self) -> list[int]:
        stored = getattr(self.samples, "lengths", None)  # Arrow-backed samples keep a length column
        return stored() if stored else [len(s.input_ids) for s in self.samples]


@dataclass
class PadCollator:
    pad_token_id: int
    pad_to_multiple_of: int = 1

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        longest = max(len(r["input_ids"]) for r in rows)
        m = self.pad_to_multiple_of
        width = ((longest + m - 1) // m) * m
        batch = {
            "input_ids": torch.full((len(rows), width), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
            "labels": torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long),
        }
        weighted = any("loss_weights" in r for r in rows)
        if weighted:
            batch["loss_weights"] = torch.zeros((len(rows), width), dtype=torch.float32)
        for i, r in enumerate(rows):
            n = len(r["input_ids"])
            batch["input_ids"][i, :n] = torch.tensor(r["input_ids"])
            batch["attention_mask"][i, :n] = 1
            batch["labels"][i, :n] = torch.tensor(r["labels"])
            if weighted:
                w = r.get("loss_weights") or [1.0] * n
                batch["loss_weights"][i, :n] = torch.tensor(w)
        return batch


@dataclass
class PackedCollator:
    """Padding-free batches: the rows are concatenated into one sequence whose `position_ids` restart at 0 for
    each sample. transformers detects the restarts and keeps samples from attending to each other, provided no
    attention mask is passed and no KV cache is built (training sets `use_cache=False`; see shared notes, Q5).

    `flash_kwargs`: also hand over the samples' boundaries the way transformers' flash-attention kernels take them
    (`cu_seq_lens_q/k`, `max_length_q/k`: its FlashAttentionKwargs). Without them every layer finds the boundaries
    again from `position_ids`, reading values off the GPU (a host sync) twice per layer."""

    flash_kwargs: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        weights: list[float] = []
        weighted = any("loss_weights" in r for r in rows)
        for r in rows:
            n = len(r["input_ids"])
            ids += r["input_ids"]
            # The first token of each sample is never a target of the previous one.
            labels += [IGNORE_INDEX] + list(r["labels"][1:])
            positions += list(range(n))
            if weighted:
                weights += r.get("loss_weights") or [1.0] * n
        batch = {
            "input_ids": torch.tensor([ids]),
            "labels": torch.tensor([labels]),
            "position_ids": torch.tensor([positions]),
        }
        if weighted:
            batch["loss_weights"] = torch.tensor([weights])
        if self.flash_kwargs:
            batch.update(flash_boundaries([len(r["input_ids"]) for r in rows]))
        return batch


def flash_boundaries(lengths: list[int]) -> dict[str, Any]:
    """The samples of a packed row as transformers' flash-attention kernels take them (its FlashAttentionKwargs):
    int32 cumulative lengths and the longest sample, as an int, for queries and keys alike."""
    starts = torch.tensor([0, *lengths], dtype=torch.int32).cumsum(0, dtype=torch.int32)
    return {"cu_seq_lens_q": starts, "cu_seq_lens_k": starts, "max_length_q": max(lengths), "max_length_k": max(lengths)}
