"""A training stage: the one place that says how records become samples (its data recipe), how samples batch
(its dataset view and collator), what the loss is and which trainer runs it. The data pipeline and `train` ask the
stage; adding one is one file."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ember.config.schema import EmberConfig
from ember.data.recipes import Recipe


@dataclass(frozen=True)
class Stage:
    name: str
    recipe: Recipe
    loss: Callable[..., torch.Tensor]
    description: str
    needs_template: bool = True  # conversations are rendered with a chat template

    def dataset(self, samples) -> torch.utils.data.Dataset:
        """The processed samples (`recipe.samples`) as the rows the collator takes."""
        from ember.data.collate import EncodedDataset

        return EncodedDataset(samples)

    def collator(self, tokenizer, packing: bool, flash: bool = False) -> Any:
        """`flash`: the model attends through a flash-attention kernel, which takes a packed row's sample
        boundaries with the batch (`PackedCollator.flash_kwargs`)."""
        from ember.data.collate import PackedCollator, PadCollator

        if packing:
            return PackedCollator(flash_kwargs=flash)
        return PadCollator(tokenizer.pad_token_id, pad_to_multiple_of=8 if torch.cuda.is_available() else 1)

    def packs_by_default(self) -> bool:
        """Whether `data.packing: null` may pack this stage's batches (where the model's attention keeps packed
        samples apart without a mask: ember.models.segment_attention.packed_row_attention)."""
        return True

    def with_images(self, images: Any) -> "Stage":
        """This stage for an image-text model (`images`: the model's `ember.data.vision.ImageTokens`)."""
        from ember.errors import ConfigError

        raise ConfigError(f"stage {self.name} trains on text only; an image-text model trains with stage: sft")

    def trainer(self, cfg: EmberConfig, **kwargs) -> Any:
        """The `transformers.Trainer` of this stage; `kwargs` are the Trainer's and `EmberTrainer`'s arguments."""
        from ember.training.trainer import EmberTrainer

        return EmberTrainer(loss_fn=self.loss, **kwargs)
