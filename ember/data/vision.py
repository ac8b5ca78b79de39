"""Image + text data: the model's processor as the renderer's image expander, the recipe, samples and batches.

Where images live at each step (docs/multimodal.md):
- records (Arrow) and processed samples (the data cache) hold each image's encoded file bytes, so the cache is
  self-contained and small (a PNG, not its pixels);
- encoding (the pipeline's worker processes) opens each image only to ask the model's processor how many tokens it
  becomes: the sample's ids hold that many image tokens, labelled -100;
- batching (`VisionCollator`, in the DataLoader) turns the images into pixel values with the processor's image
  processor, so pixels exist only for the batch being trained.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import pyarrow as pa

from ember.config.schema import DataConfig, DatasetSpec
from ember.data.collate import EncodedDataset, PadCollator
from ember.data.conversation import Conversation, Message
from ember.data.images import open_image
from ember.data.recipes import ChatRecipe
from ember.data.render import IGNORE_INDEX, Encoded
from ember.data.store import (CONVERSATION_SCHEMA, SAMPLE_SCHEMA, Rows, conversation_row, row_conversation,
                              row_sample, sample_row)
from ember.data.vision_formats import convert_with_images
from ember.errors import DataError

_MESSAGE = CONVERSATION_SCHEMA.field("messages").type.value_type
VISION_CONVERSATION_SCHEMA = pa.schema([
    CONVERSATION_SCHEMA.field("source"),
    pa.field("messages", pa.list_(pa.struct([*_MESSAGE, pa.field("images", pa.list_(pa.binary()))]))),
    CONVERSATION_SCHEMA.field("tools"),
    CONVERSATION_SCHEMA.field("meta"),
])
VISION_SAMPLE_SCHEMA = SAMPLE_SCHEMA.append(pa.field("images", pa.list_(pa.binary())))


@dataclass
class ImageTokens:
    """A model's processor, seen from the renderer: what text an image stands as, which token the processor expands,
    into what, and the pixel inputs of a batch's images."""

    processor: Any
    image_text: str  # in the rendered chat, per image (the family's `vision.image_text`)
    token_types: bool = False  # the model also takes `mm_token_type_ids` (1 at image tokens)
    _expansions: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def __post_init__(self):
        tokenizer = self.processor.tokenizer
        self.image_token = getattr(self.processor, "image_token", None) or "<image>"
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise DataError("processor", None, f"the tokenizer has no '{self.image_token}' token: add it as a "
                                               "special token (the model's embeddings must cover it)")
        if self.image_token not in self.image_text:
            raise DataError("processor", None, f"the image text {self.image_text!r} does not hold the processor's "
                                               f"image token {self.image_token!r}")

    @property
    def identity(self) -> str:
        """What changes the ids an image becomes (the processor's settings and the texts), for the data cache key."""
        settings = self.processor.image_processor.to_dict()
        payload = {"image_text": self.image_text, "token": self.image_token, "processor": type(self.processor).__name__,
                   "settings": settings, "token_types": self.token_types}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def expansion(self, image: bytes) -> list[int]:
        """The ids the processor puts where this image's one image token stood (the processor's own expansion)."""
        key = hashlib.sha256(image).hexdigest()
        ids = self._expansions.get(key)
        if ids is None:
            out = self.processor(images=[open_image(image)], text=[self.image_token], add_special_tokens=False)
            ids = [int(t) for t in out["input_ids"][0]]
            self._expansions[key] = ids
        return ids

    def expand(self, enc: Encoded, images: Sequence[bytes]) -> Encoded:
        """`enc` with its i-th image token replaced by the i-th image's expansion: labels -100, weights 0 there."""
        slots = [k for k, t in enumerate(enc.input_ids) if t == self.image_token_id]
        if len(slots) != len(images):
            raise DataError(enc.source, None, f"{len(images)} image(s) but {len(slots)} image token(s) after "
                                              "rendering: the chat template dropped or repeated an image")
        ids: list[int] = []
        labels: list[int] = []
        weights: Optional[list[float]] = [] if enc.weights is not None else None
        starts = []  # (old position, growth before it) to move the answer spans
        prev = grown = 0
        for slot, image in zip(slots, images, strict=True):
            tokens = self.expansion(image)
            ids += enc.input_ids[prev:slot] + tokens
            labels += enc.labels[prev:slot] + [IGNORE_INDEX] * len(tokens)
            if weights is not None:
                weights += enc.weights[prev:slot] + [0.0] * len(tokens)
            grown += len(tokens) - 1
            starts.append((slot, grown))
            prev = slot + 1
        ids += enc.input_ids[prev:]
        labels += enc.labels[prev:]
        if weights is not None:
            weights += enc.weights[prev:]

        def moved(position: int) -> int:
            return position + max((g for s, g in starts if s < position), default=0)

        answers = [(i, moved(a), moved(b)) for i, a, b in enc.answers] if enc.answers is not None else None
        return Encoded(ids, labels, enc.source, weights, enc.turns_dropped, enc.truncated, list(enc.warnings),
                       answers, list(images))

    def pixels(self, images: Sequence[Sequence[bytes]]) -> dict[str, Any]:
        """The image processor's tensors (pixel values, grids, ...) for the images of each row, in order."""
        flat = [open_image(b) for row in images for b in row]
        if not flat:
            return {}
        return dict(self.processor.image_processor(images=flat, return_tensors="pt"))

    def token_type_ids(self, input_ids):
        return (input_ids == self.image_token_id).int()


def vision_sample_row(enc: Encoded) -> dict[str, Any]:
    return {**sample_row(enc), "images": list(enc.images or [])}


def row_vision_sample(row: dict[str, Any]) -> Encoded:
    enc = row_sample(row)
    enc.images = list(row["images"]) or None
    return enc


def vision_conversation_row(conv: Conversation) -> dict[str, Any]:
    row = conversation_row(conv)
    for out, m in zip(row["messages"], conv.messages, strict=True):
        out["images"] = list(m.images or [])
    return row


def row_vision_conversation(row: dict[str, Any]) -> Conversation:
    conv = row_conversation(row)
    for m, raw in zip(conv.messages, row["messages"], strict=True):
        m.images = list(raw["images"]) or None
    return conv


class VisionSamples(Rows[Encoded]):
    """Processed image + text samples (ids, labels, the images' bytes) in Arrow files; items are `Encoded`."""

    def __init__(self, paths: Sequence[Path], keep: Optional[object] = None):
        super().__init__(paths, VISION_SAMPLE_SCHEMA, row_vision_sample, keep)

    def lengths(self) -> list[int]:
        return self.column("length")

    def __getstate__(self) -> dict[str, Any]:
        return {"paths": self.paths}

    def __setstate__(self, state: dict[str, Any]) -> None:
        VisionSamples.__init__(self, state["paths"])


class VisionChatRecipe(ChatRecipe):
    """Conversations whose user messages may hold images (`ember.data.vision_formats`). A conversation with images
    is kept whole or dropped when too long (truncation would cut an image's tokens or lose its place); text-only
    conversations are fitted as `data.truncation` says."""

    record_schema = VISION_CONVERSATION_SCHEMA
    shard_schema = VISION_SAMPLE_SCHEMA

    def __init__(self, images: ImageTokens):
        self.images = images
        self.name = f"vision-chat-{images.identity}"

    def samples(self, paths: Sequence[Path], keep: Optional[object] = None) -> VisionSamples:
        return VisionSamples(paths, keep)

    def convert(self, fmt: str, record: dict[str, Any], source: str, spec: DatasetSpec, data: DataConfig) -> Conversation:
        if fmt == "text":
            raise DataError(source, None, "raw text ({text}) has no dialogue to fine-tune on; use stage: pt")
        return convert_with_images(fmt, record, source, spec.columns, spec.system or data.system)

    def record_row(self, record: Conversation) -> dict[str, Any]:
        return vision_conversation_row(record)

    def row_record(self, row: dict[str, Any]) -> Conversation:
        return row_vision_conversation(row)

    def truncation(self, conv: Conversation, data: DataConfig) -> str:
        return "drop" if any(m.images for m in conv.messages) else data.truncation

    def sample_row(self, sample: Encoded) -> dict[str, Any]:
        return vision_sample_row(sample)


class VisionDataset(EncodedDataset):
    """Rows the `VisionCollator` takes: ids, labels (and weights) plus the sample's images."""

    def __getitem__(self, i: int) -> dict[str, Any]:
        s = self.samples[i]
        row = {"input_ids": s.input_ids, "labels": s.labels, "images": s.images or []}
        if s.weights is not None:
            row["loss_weights"] = s.weights
        return row


@dataclass
class VisionCollator:
    """Right-padded ids and labels (`PadCollator`) plus the pixel inputs of the batch's images, made here."""

    pad: PadCollator
    images: ImageTokens

    def __call__(self, rows: list[dict[str, Any]]) -> dict[str, Any]:
        images = [r.get("images") or [] for r in rows]
        batch = self.pad([{k: v for k, v in r.items() if k != "images"} for r in rows])
        batch.update(self.images.pixels(images))
        if self.images.token_types:
            batch["mm_token_type_ids"] = self.images.token_type_ids(batch["input_ids"])
        return batch


def conversation_images(messages: Sequence[Message]) -> list[bytes]:
    """Every image of a message list, in the order their tokens appear."""
    return [image for m in messages for image in (m.images or ())]
