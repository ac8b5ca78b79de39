"""A training stage: the one place that says how records become samples (its data recipe), how samples batch
(its collator) and what the loss is. The data pipeline and the trainer ask the stage; adding one is one file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ember.data.recipes import Recipe


@dataclass(frozen=True)
class Stage:
    name: str
    recipe: Recipe
    loss: Callable[..., torch.Tensor]
    description: str
    needs_template: bool = True  # conversations are rendered with a chat template

    def collator(self, tokenizer, packing: bool) -> Any:
        from ember.data.collate import PackedCollator, PadCollator

        if packing:
            return PackedCollator()
        return PadCollator(tokenizer.pad_token_id, pad_to_multiple_of=8 if torch.cuda.is_available() else 1)
