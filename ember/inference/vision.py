"""A prompt's images → what the model's prefill needs: pixel inputs from the model's processor, and for models that
place image tokens in 2D (Qwen2-VL / Qwen2.5-VL M-RoPE) the prompt's 3D position ids and the offset that every
later position carries, from the model's own `get_rope_index`."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from ember.inference.completion import PromptImages
from ember.models.forward import base_model


def prompt_images(model: Any, renderer: Any, ids: list[int], images: Sequence[bytes]) -> PromptImages:
    tokens = renderer.images
    if tokens is None:
        from ember.errors import ConfigError

        raise ConfigError("the messages hold images but this model reads none: use an image-text model")
    tensors = tokens.pixels([list(images)])
    rope = _rope_index(model)
    if rope is None or "image_grid_thw" not in tensors:
        return PromptImages(tensors)
    input_ids = torch.tensor([ids])
    kwargs = {"image_grid_thw": tensors["image_grid_thw"]}
    if "mm_token_type_ids" in inspect.signature(rope).parameters:  # transformers >= 5.2x finds images by type ids
        kwargs["mm_token_type_ids"] = tokens.token_type_ids(input_ids)
    positions, deltas = rope(input_ids, **kwargs)
    return PromptImages(tensors, positions, int(deltas.reshape(-1)[0]))


def _rope_index(model: Any):
    """The model's `get_rope_index` (M-RoPE models only), through a peft wrapper."""
    base = base_model(model)
    for candidate in (base, getattr(base, "model", None)):
        rope = getattr(candidate, "get_rope_index", None)
        if callable(rope):
            return rope
    return None
