"""What a model's forward accepts, asked of the model itself (peft wrappers pass their kwargs through to it)."""

from __future__ import annotations

import inspect


def accepts_logits_to_keep(model) -> bool:
    """True when the causal LM can compute logits at chosen positions only (transformers' `logits_to_keep`)."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        return "logits_to_keep" in inspect.signature(inner.forward).parameters
    except (TypeError, ValueError):
        return False
