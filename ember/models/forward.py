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


def projection_decoder(model):
    """The decoder whose last hidden state the model's head projects, when that head is a plain bias-free
    nn.Linear (not an adapter layer or a modules_to_save wrapper) and the decoder a module of its own; else None.
    Ember's chunked loss needs both (EmberTrainer), and `ember plan` plans it from the same answer."""
    import torch

    base = base_model(model)
    head = base.get_output_embeddings()
    decoder = getattr(base, "get_decoder", lambda: None)()
    plain = type(head) is torch.nn.Linear and head.bias is None
    return decoder if plain and isinstance(decoder, torch.nn.Module) and decoder is not base else None
