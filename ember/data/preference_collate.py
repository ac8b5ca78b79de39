"""Batches of preference samples: every sample becomes two sequences, run through the model in one forward.

Pairs: [chosen 1..B, rejected 1..B]. KTO: [answer 1..B, mismatched 1..B], where mismatched i is the prompt of
sample i followed by the answer of the sample stored before it (the sample order of the split, fixed at data time,
so precomputed reference log-probs stay valid whatever the batches). The KL baseline of the KTO loss is estimated
from these mismatched sequences, as TRL does with its rotated completions.

Padded batches are right-padded [2B, width]; packed ones are one row of all sequences with restarting
`position_ids` and a `sequence_index` that says which sequence each token belongs to (see ember.data.collate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch

from ember.data.collate import flash_boundaries
from ember.data.preference_samples import KTOSample, PairSample
from ember.data.render import IGNORE_INDEX


class _PreferenceDataset(torch.utils.data.Dataset):
    """Stored samples as collator rows; `ref_logps` (the reference's log-probs of each row's two sequences) is set
    by the trainer when they are precomputed."""

    def __init__(self, samples: Sequence[Any], ref_logps: Optional[Sequence[Sequence[float]]] = None):
        self.samples, self.ref_logps = samples, ref_logps

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.row(i)
        if self.ref_logps is not None:
            row["ref_logps"] = list(self.ref_logps[i])
        return row

    def row(self, i: int) -> dict[str, Any]:
        raise NotImplementedError

    def lengths(self) -> list[int]:
        stored = getattr(self.samples, "lengths", None)
        return stored() if stored else [s.length for s in self.samples]


class PairDataset(_PreferenceDataset):
    samples: Sequence[PairSample]

    def row(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        return {"sequences": [(s.chosen.input_ids, s.chosen.labels), (s.rejected.input_ids, s.rejected.labels)]}


class KTODataset(_PreferenceDataset):
    samples: Sequence[KTOSample]

    def row(self, i: int) -> dict[str, Any]:
        s, other = self.samples[i], self.samples[(i - 1) % len(self.samples)]
        e, o = s.encoded, other.encoded
        mismatched = (e.input_ids[:s.prompt_length] + o.input_ids[other.prompt_length:],
                      e.labels[:s.prompt_length] + o.labels[other.prompt_length:])
        return {"sequences": [(e.input_ids, e.labels), mismatched], "label": s.label}


@dataclass
class PreferenceCollator:
    """Rows of `PairDataset` / `KTODataset` → one batch of their 2B sequences (sequence k of every row, then k+1).
    `flash_kwargs`: a packed batch also carries the sequences' boundaries for flash-attention kernels, as
    `PackedCollator`'s does."""

    pad_token_id: int
    packing: bool = False
    pad_to_multiple_of: int = 1
    flash_kwargs: bool = False

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        per_row = len(rows[0]["sequences"])
        sequences = [r["sequences"][k] for k in range(per_row) for r in rows]
        batch = self._packed(sequences) if self.packing else self._padded(sequences)
        if "label" in rows[0]:
            batch["kto_label"] = torch.tensor([r["label"] for r in rows], dtype=torch.bool)
        if "ref_logps" in rows[0]:
            batch["ref_logps"] = torch.tensor([r["ref_logps"][k] for k in range(per_row) for r in rows],
                                              dtype=torch.float64)
        return batch

    def _padded(self, sequences: list[tuple[list[int], list[int]]]) -> dict[str, torch.Tensor]:
        m = self.pad_to_multiple_of
        width = (max(len(ids) for ids, _ in sequences) + m - 1) // m * m
        batch = {
            "input_ids": torch.full((len(sequences), width), self.pad_token_id, dtype=torch.long),
            "attention_mask": torch.zeros((len(sequences), width), dtype=torch.long),
            "labels": torch.full((len(sequences), width), IGNORE_INDEX, dtype=torch.long),
        }
        for i, (ids, labels) in enumerate(sequences):
            batch["input_ids"][i, :len(ids)] = torch.tensor(ids)
            batch["attention_mask"][i, :len(ids)] = 1
            batch["labels"][i, :len(ids)] = torch.tensor(labels)
        return batch

    def _packed(self, sequences: list[tuple[list[int], list[int]]]) -> dict[str, Any]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        index: list[int] = []
        for k, (seq_ids, seq_labels) in enumerate(sequences):
            ids += seq_ids
            labels += [IGNORE_INDEX] + list(seq_labels[1:])  # never a target of the previous sequence
            positions += range(len(seq_ids))
            index += [k] * len(seq_ids)
        batch = {"input_ids": torch.tensor([ids]), "labels": torch.tensor([labels]),
                 "position_ids": torch.tensor([positions]), "sequence_index": torch.tensor([index])}
        if self.flash_kwargs:
            batch.update(flash_boundaries([len(seq_ids) for seq_ids, _ in sequences]))
        return batch
