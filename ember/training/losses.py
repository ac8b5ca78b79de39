"""Losses: one small function per objective; each stage (ember.training.stages) names the one it trains with."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from ember.data.render import IGNORE_INDEX


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor] = None,
                   num_items: Optional[torch.Tensor | int] = None) -> torch.Tensor:
    """Next-token cross-entropy summed over trained tokens and divided by `num_items`.

    `num_items` is the trained-token count of the whole gradient-accumulation step (all micro-batches, all ranks),
    so batch 8 × GA 1 and batch 2 × GA 4 give the same loss and gradients. Without it (evaluation), the mean over
    this batch's trained tokens. `weights` scale each token's term (per-message loss weights).
    """
    logits = logits[..., :-1, :].float()
    targets = labels[..., 1:].to(logits.device)
    per_token = F.cross_entropy(
        logits.reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction="none"
    )
    if weights is not None:
        per_token = per_token * weights[..., 1:].reshape(-1).to(per_token.device)
    denominator = num_items if num_items is not None else targets.ne(IGNORE_INDEX).sum().clamp(min=1)
    return per_token.sum() / denominator
