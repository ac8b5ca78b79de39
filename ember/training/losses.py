"""Losses: one small function per objective; each stage (ember.training.stages) names the one it trains with."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ember.data.render import IGNORE_INDEX


def trained_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions (1D, shared by every row) whose next token is trained in at least one row.

    Only these positions need logits: passed to the model as `logits_to_keep`, the vocabulary projection and the
    softmax skip every prompt token (a SmolLM2 LoRA step 1.12x faster on a CPU, bench/train_throughput.py). With packed batches
    (one row) the set is exact; with padded rows it is their union.
    """
    return labels[..., 1:].ne(IGNORE_INDEX).reshape(-1, labels.size(-1) - 1).any(dim=0).nonzero().squeeze(-1)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor] = None,
                   num_items: Optional[torch.Tensor | int] = None,
                   positions: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Next-token cross-entropy summed over trained tokens and divided by `num_items`.

    `num_items` is the trained-token count of the whole gradient-accumulation step (all micro-batches, all ranks),
    so batch 8 × GA 1 and batch 2 × GA 4 give the same loss and gradients. Without it (evaluation), the mean over
    this batch's trained tokens. `weights` scale each token's term (per-message loss weights). `positions`: the
    logits were computed only at these positions (see `trained_positions`); the loss is the same.
    """
    if positions is None:
        logits, targets = logits[..., :-1, :], labels[..., 1:]
        weights = weights[..., 1:] if weights is not None else None
    else:
        targets = labels[..., positions + 1]
        weights = weights[..., positions + 1] if weights is not None else None
    targets = targets.to(logits.device)
    per_token = F.cross_entropy(
        logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    if weights is not None:
        per_token = per_token * weights.reshape(-1).to(per_token.device)
    denominator = num_items if num_items is not None else targets.ne(IGNORE_INDEX).sum().clamp(min=1)
    return per_token.sum() / denominator
