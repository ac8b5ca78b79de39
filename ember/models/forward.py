"""What a model's forward accepts, asked of the model itself (peft wrappers pass their kwargs through to it)."""

from __future__ import annotations

import inspect


def base_model(model):
    """The transformers model under a peft wrapper (the model itself when there is none)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def forward_accepts(model, name: str) -> bool:
    """True when the (unwrapped) model's forward takes the keyword `name`."""
    try:
        return name in inspect.signature(base_model(model).forward).parameters
    except (TypeError, ValueError):
        return False


def accepts_logits_to_keep(model) -> bool:
    """True when the causal LM can compute logits at chosen positions only (transformers' `logits_to_keep`)."""
    return forward_accepts(model, "logits_to_keep")
