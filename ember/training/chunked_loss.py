"""Cross-entropy through the vocabulary projection, chunk by chunk, on trained tokens only.

The model's logits for a batch are [tokens, vocabulary] — for SmolLM2 at batch 4 x 512, 100M floats, written in
bf16, copied to fp32, log-softmaxed and back-propagated: a sixth of a CPU LoRA step (profiled). Here the final
hidden states of the trained tokens alone go through the projection a chunk of rows at a time; each chunk's loss
and its gradients (softmax minus one-hot, times the token's weight over the step's token count) are computed at
once and only the [tokens, hidden] gradient is kept until backward. The numbers are those of the plain path: the
projection in the dtype the model's own logits came out in (bf16 under autocast), the softmax in fp32, the
gradient cast back to that dtype before it meets the weight, as autocast's backward does.
"""

from __future__ import annotations

from typing import Optional

import torch

CHUNK_ELEMENTS = 1 << 23  # logits per chunk: 32 MB in fp32 (170 rows of SmolLM2's 49k), small enough to stay in cache
# logits the model computes once per run, at the first trained positions of the first batch, to show that they are the
# projection this loss computes (EmberTrainer._probe): 4 MB in fp32
CHECK_ELEMENTS = 1 << 20


class _ProjectedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, scale, dtype, chunk):  # noqa: D102 - see linear_cross_entropy
        w = weight.to(dtype)
        softmax_dtype = torch.promote_types(dtype, torch.float32)  # fp32 (fp64 when asked for it)
        scale = scale.to(softmax_dtype)
        total = torch.zeros((), dtype=softmax_dtype, device=hidden.device)
        grad_hidden = torch.empty_like(hidden) if hidden.requires_grad else None
        grad_weight = torch.zeros(weight.shape, dtype=softmax_dtype, device=weight.device) \
            if weight.requires_grad else None
        for start in range(0, hidden.size(0), chunk):
            h = hidden[start:start + chunk].to(dtype)
            t, s = targets[start:start + chunk], scale[start:start + chunk]
            rows = torch.arange(t.numel(), device=t.device)
            # log-sum-exp by hand, each pass over the chunk doing as much as it can (torch.logsumexp makes five
            # passes on a CPU): the max of the logits as computed, their upcast and shift in one pass, the softmax
            # numerators left in place for the gradient
            raw = h @ w.T
            logits = torch.sub(raw, raw.amax(dim=-1, keepdim=True).to(softmax_dtype))  # a softmax_dtype result
            del raw
            picked = logits.gather(1, t[:, None]).squeeze(1)
            numerators = logits.exp_()
            sums = numerators.sum(dim=-1)
            total += ((sums.log() - picked) * s).sum()
            # d loss / d logits = (softmax - one_hot) * scale, computed in softmax_dtype and rounded once to `dtype`
            factor = (s / sums)[:, None]
            at_targets = numerators[rows, t] * factor[:, 0] - s
            grad = torch.mul(numerators, factor, out=torch.empty(numerators.shape, dtype=dtype, device=h.device))
            grad[rows, t] = at_targets.to(dtype)
            if grad_hidden is not None:
                grad_hidden[start:start + chunk] = grad @ w
            if grad_weight is not None:
                grad_weight += (grad.T @ h).to(softmax_dtype)
            # freed before the next chunk's logits exist: at most one chunk's fp32 logits and its gradient at a time
            del logits, numerators, grad
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight) if g is not None))
        ctx.has = (grad_hidden is not None, grad_weight is not None)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        saved = iter(ctx.saved_tensors)
        grad_hidden = next(saved) * grad_output if ctx.has[0] else None
        grad_weight = (next(saved) * grad_output).to(ctx.weight_dtype) if ctx.has[1] else None
        return grad_hidden, grad_weight, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor,
                         dtype: torch.dtype, chunk: int = 0) -> torch.Tensor:
    """sum_i scale_i * CE(hidden_i @ weight.T, targets_i): `hidden` [N, H] (trained tokens only), `weight` [V, H]
    (the output embedding), `targets` [N], `scale` [N] (loss weight over the step's trained-token count), `dtype`
    the projection's compute dtype; `chunk` rows at a time (default: CHUNK_ELEMENTS logits)."""
    chunk = chunk or max(1, CHUNK_ELEMENTS // weight.size(0))
    return _ProjectedCrossEntropy.apply(hidden, weight, targets, scale, dtype, chunk)


def trained_rows(hidden: torch.Tensor, labels: torch.Tensor, weights: Optional[torch.Tensor],
                 num_items) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The hidden states whose next token is trained ([N, H]), those tokens and their scale (weight / num_items;
    without `num_items`, the mean over these tokens), from a batch's final hidden states [B, T, H]."""
    from ember.data.render import IGNORE_INDEX

    targets = labels[..., 1:].to(hidden.device)
    keep = targets.ne(IGNORE_INDEX)
    rows = hidden[:, :-1][keep]
    scale = weights[..., 1:].to(hidden.device)[keep].float() if weights is not None else \
        torch.ones(rows.size(0), device=hidden.device)
    denominator = num_items if num_items is not None else keep.sum().clamp(min=1)
    return rows, targets[keep], scale / denominator
