"""Cross-entropy through the vocabulary projection, chunk by chunk, on trained tokens only.

The model's logits for a batch are [tokens, vocabulary] — for SmolLM2 at batch 4 x 512, 100M floats, written in
bf16, copied to fp32, log-softmaxed and back-propagated: a sixth of a CPU LoRA step (profiled). Here the final
hidden states of the trained tokens alone go through the projection a chunk of rows at a time; each chunk's loss
and its gradients (softmax minus one-hot, times the token's weight over the step's token count) are computed at
once and only the [tokens, hidden] gradient is kept until backward. The numbers are those of the plain path: the
projection in the dtype the model's own logits came out in (bf16 under autocast), the softmax in fp32, the
gradient cast back to that dtype before it meets the weight, as autocast's backward does.

On a CPU in float32 a frozen head (LoRA, the default) goes further: each chunk of rows meets the vocabulary a block
of columns at a time, and the block's logits are max-shifted, exponentiated, summed and multiplied back into the
rows' gradient while they are still in cache, the running maximum rescaling what came before (the online softmax of
flash attention). No chunk-wide logits are ever written: the chunk path's 170 x 49152 fp32 logits are 33 MB, past
the cache, and read back for every pass; its projection ran at about 65 GFLOP/s where the model's matrix multiplies
reach 165 (profiled: 14% of a SmolLM2 LoRA step). Blocked, the loss runs 1.4-1.6x quicker for SmolLM2's head and 2x
for a 152k vocabulary (bench/results/loss_blocks.txt). The loss is the same sum; the rows' gradient agrees with the
logits path's to float32 rounding (the exponentials are summed block by block). Half precision keeps the chunk
path: its blocks' gradients would each be rounded to bf16 before they are summed.
"""

from __future__ import annotations

from typing import Optional

import torch

CHUNK_ELEMENTS = 1 << 23  # logits per chunk: 32 MB in fp32 (170 rows of SmolLM2's 49k), small enough to stay in cache
# logits the model computes once per run, at the first trained positions of the first batch, to show that they are the
# projection this loss computes (EmberTrainer._probe): 4 MB in fp32
CHECK_ELEMENTS = 1 << 20
# the online path's block: up to 1024 rows against 1024 vocabulary columns, 4 MB of fp32 logits, inside a server
# CPU's L3 (on a 32 MB L3, blocks from 256 to 1400 rows by 512 to 2048 columns all ran 1.4-1.7x the chunk path's rate,
# within the machine's noise of each other)
BLOCK_ROWS = 1024
BLOCK_VOCAB = 1024


class _ProjectedCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, scale, dtype, chunk, vocab_block):  # noqa: D102 - see linear_cross_entropy
        if vocab_block:
            total, grad_hidden = _online_cross_entropy(hidden, weight, targets, scale, chunk, vocab_block)
            grad_weight = None
        else:
            total, grad_hidden, grad_weight = _chunked_cross_entropy(hidden, weight, targets, scale, dtype, chunk)
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight) if g is not None))
        ctx.has = (grad_hidden is not None, grad_weight is not None)
        ctx.weight_dtype = weight.dtype
        return total

    @staticmethod
    def backward(ctx, grad_output):  # noqa: D102
        saved = iter(ctx.saved_tensors)
        grad_hidden = next(saved) * grad_output if ctx.has[0] else None
        grad_weight = (next(saved) * grad_output).to(ctx.weight_dtype) if ctx.has[1] else None
        return grad_hidden, grad_weight, None, None, None, None, None


def _chunked_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor,
                           dtype: torch.dtype, chunk: int
                           ) -> tuple[torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]:
    """The loss, the rows' gradient and the head's (None where not needed), `chunk` rows of whole logits at a time."""
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
    return total, grad_hidden, grad_weight


def _online(hidden: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> bool:
    """Whether the loss takes the online path: a frozen head, float32, on a CPU (see the module's docstring)."""
    return (hidden.device.type == "cpu" and dtype == torch.float32 and weight.dtype == torch.float32
            and hidden.dtype == torch.float32 and not weight.requires_grad)


def _online_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor,
                          rows: int, columns: int) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The loss and the rows' gradient, `rows` rows against `columns` vocabulary columns at a time, no logits kept.

    Per chunk of rows, running over the vocabulary: the row maxima so far `top`, the sums of exp(logit - top) `sums`,
    and `acc`, those exponentials times the weight (the softmax's share of the gradient, unnormalised). A new block
    raising a row's maximum rescales its sum and accumulator by exp(old - new), as flash attention does; at the end
    the gradient is acc * scale / sums, less scale times the target's embedding (the one-hot's share)."""
    total = torch.zeros((), dtype=torch.float32)
    grad_hidden = torch.empty_like(hidden) if hidden.requires_grad else None
    vocab = weight.size(0)
    for start in range(0, hidden.size(0), rows):
        h = hidden[start:start + rows].detach()
        t, s = targets[start:start + rows], scale[start:start + rows].float()
        n = h.size(0)
        top = torch.full((n,), float("-inf"))
        sums = torch.zeros(n)
        picked = torch.zeros(n)
        acc = torch.zeros(n, h.size(1)) if grad_hidden is not None else None
        for first in range(0, vocab, columns):
            w = weight[first:first + columns]
            logits = h @ w.T  # [n, columns]: in cache from here to the accumulation
            local = t - first
            inside = (local >= 0) & (local < w.size(0))
            picked = torch.where(inside, logits.gather(1, local.clamp(0, w.size(0) - 1)[:, None])[:, 0], picked)
            new_top = torch.maximum(top, logits.amax(dim=-1))
            rescale = (top - new_top).exp_()  # 0 for the first block (exp(-inf)), 1 where the maximum stayed
            numerators = logits.sub_(new_top[:, None]).exp_()
            sums.mul_(rescale).add_(numerators.sum(dim=-1))
            if acc is not None:
                acc.mul_(rescale[:, None]).addmm_(numerators, w)
            top = new_top
            del logits, numerators
        total += ((top + sums.log() - picked) * s).sum()
        if grad_hidden is not None:
            grad_hidden[start:start + n] = acc.mul_((s / sums)[:, None]).sub_(s[:, None] * weight[t])
    return total, grad_hidden


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor,
                         dtype: torch.dtype, chunk: int = 0, vocab_block: int = 0,
                         online: Optional[bool] = None) -> torch.Tensor:
    """sum_i scale_i * CE(hidden_i @ weight.T, targets_i): `hidden` [N, H] (trained tokens only), `weight` [V, H]
    (the output embedding), `targets` [N], `scale` [N] (loss weight over the step's trained-token count), `dtype`
    the projection's compute dtype; `chunk` rows at a time (default: CHUNK_ELEMENTS logits, or BLOCK_ROWS on the
    online path), `vocab_block` vocabulary columns at a time on the online path (default BLOCK_VOCAB); `online`: take
    the online path (None: where it applies; False: the chunk path, a baseline for bench/loss_blocks.py)."""
    eligible = _online(hidden, weight, dtype)
    if online and not eligible:
        raise ValueError("the online cross-entropy is for a frozen float32 head on a CPU")
    if eligible and online is not False:
        return _ProjectedCrossEntropy.apply(hidden, weight, targets, scale, dtype, chunk or BLOCK_ROWS,
                                            vocab_block or BLOCK_VOCAB)
    chunk = chunk or max(1, CHUNK_ELEMENTS // weight.size(0))
    return _ProjectedCrossEntropy.apply(hidden, weight, targets, scale, dtype, chunk, 0)


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
