"""Supervised fine-tuning: rendered conversations, loss on the masked assistant spans. On an image-text model the
same stage reads images too (`with_images`): its recipe keeps each image's bytes with the sample and its collator
adds the pixel inputs (ember.data.vision)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ember.data.recipes import CHAT
from ember.training.losses import causal_lm_loss
from ember.training.stages.base import Stage


@dataclass(frozen=True)
class ChatStage(Stage):
    def with_images(self, images: Any) -> Stage:
        from ember.data.vision import VisionChatRecipe

        return ImageChatStage(self.name, VisionChatRecipe(images), self.loss, f"{self.description}, with images",
                              images=images)


@dataclass(frozen=True)
class ImageChatStage(Stage):
    images: Any = None  # ember.data.vision.ImageTokens

    def dataset(self, samples) -> torch.utils.data.Dataset:
        from ember.data.vision import VisionDataset

        return VisionDataset(samples)

    def packs_by_default(self) -> bool:
        return False  # image batches are padded

    def collator(self, tokenizer, packing: bool, flash: bool = False) -> Any:
        from ember.data.collate import PadCollator
        from ember.data.vision import VisionCollator
        from ember.errors import ConfigError

        if packing:
            raise ConfigError("data.packing: batches with images are padded, not packed; set data.packing: false")
        pad = PadCollator(tokenizer.pad_token_id, pad_to_multiple_of=8 if torch.cuda.is_available() else 1)
        return VisionCollator(pad, self.images)

    def with_images(self, images: Any) -> Stage:
        return self


SFT = ChatStage("sft", CHAT, causal_lm_loss, "instruction tuning on conversations")
