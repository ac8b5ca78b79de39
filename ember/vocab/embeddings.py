"""Grow a model's embeddings and lm_head to an extended vocabulary.

Each new row starts as the mean of the rows of the pieces the base tokenizer split that token into, so the model
first reads a new token roughly as it read its pieces. Padding rows (up to a multiple of 64, for fast matmuls) are
never produced by the tokenizer; they start as the mean of all base rows, so their logits start at the average
(low) level rather than at an arbitrary value. Tied weights stay one tensor.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ember.errors import ConfigError

PAD_MULTIPLE = 64


def padded_size(vocab_size: int, multiple: int = PAD_MULTIPLE) -> int:
    if multiple < 1:
        raise ConfigError(f"pad multiple {multiple}: must be at least 1")
    return -(-vocab_size // multiple) * multiple


def base_piece_ids(base_backend: Any, symbols: Sequence[str]) -> list[list[int]]:
    """How the base BPE model splits each model-side spelling (byte fallback included)."""
    model = base_backend.model
    return [[t.id for t in model.tokenize(s)] for s in symbols]


def resize_and_init(
    model: Any,
    new_tokens: Sequence[tuple[int, Sequence[int]]],
    vocab_size: int,
    base_vocab: int,
    multiple: int = PAD_MULTIPLE,
) -> int:
    """Resize `model` to `vocab_size` rounded up to `multiple` and initialise the new rows; returns the row count.

    `new_tokens` pairs each new id with the base ids of its pieces; `base_vocab` is the base tokenizer's length
    (rows below it are real tokens, the ones whose mean fills padding rows).
    """
    import torch

    embed = model.get_input_embeddings()
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is embed.weight
    old_rows = embed.weight.shape[0]
    if base_vocab > old_rows:
        raise ConfigError(
            f"the model has {old_rows} embedding rows but its tokenizer {base_vocab} tokens: "
            f"pass the model this tokenizer belongs to"
        )
    old = {"embed": embed.weight.detach().clone()}
    if head is not None and not tied:
        old["head"] = head.weight.detach().clone()
    rows = padded_size(max(vocab_size, old_rows), multiple)
    model.resize_token_embeddings(rows, mean_resizing=False)
    current = {"embed": model.get_input_embeddings().weight}
    if "head" in old:
        current["head"] = model.get_output_embeddings().weight
    with torch.no_grad():
        for name, weight in current.items():
            before = old[name]
            if rows > old_rows:
                weight[old_rows:] = before[:base_vocab].float().mean(dim=0).to(weight.dtype)
            for token_id, piece_ids in new_tokens:
                if not piece_ids:
                    raise ValueError(f"new token {token_id} has no base pieces to initialise from")
                weight[token_id] = before[list(piece_ids)].float().mean(dim=0).to(weight.dtype)
    if tied and model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        model.tie_weights()
    return rows
