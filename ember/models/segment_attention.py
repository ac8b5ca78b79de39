"""Attention for padding-free batches without a block-diagonal mask: causal SDPA run on each packed sample.

A padding-free batch is one row of several samples whose `position_ids` restart at 0 (ember.data.collate.
PackedCollator). transformers keeps the samples apart by building a [T, T] block-diagonal mask, and with a mask
SDPA can no longer skip the blocks above the diagonal: on a CPU, a row of 4 samples then costs more attention than
the 4 samples padded side by side (profiled; docs/training.md, "Speed on a CPU"). Run one causal SDPA per sample
instead and each sample's attention is exactly its own, at the cost of its own length squared over two.

It is registered through transformers' public `AttentionInterface` under `SEGMENTS`; a model is switched to it
with `set_attn_implementation` for training only (`segment_attention`), and back afterwards. Masks are never
built for an implementation transformers does not know, so the function refuses a row it cannot split (no
`position_ids`) instead of letting samples see each other.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from typing import Any, Optional

import torch

SEGMENTS = "ember_segments"

# Every layer of one forward pass gets the same position_ids tensor: split it once (a weak reference, so a new
# batch's tensor is never mistaken for the last one's).
_last: tuple[Optional[weakref.ref], list[list[tuple[int, int]]]] = (None, [])


def segment_bounds(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """For each row, the (start, end) of every sample: a sample starts where a position does not follow the one
    before it by exactly 1 (the rule transformers uses to find packed samples)."""
    global _last
    ref, bounds = _last
    if ref is not None and ref() is position_ids:
        return bounds
    width = position_ids.size(-1)
    bounds = []
    for row in torch.diff(position_ids, dim=-1).ne(1).tolist():
        cuts = [0, *(i + 1 for i, restart in enumerate(row) if restart), width]
        bounds.append(list(zip(cuts[:-1], cuts[1:], strict=True)))
    _last = (weakref.ref(position_ids), bounds)
    return bounds


def segment_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                 attention_mask: Optional[torch.Tensor], **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, run causally on each sample of each row ([B, T, heads, dim] like it)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    position_ids = kwargs.pop("position_ids", None)
    if attention_mask is not None or query.size(2) != key.size(2):
        raise RuntimeError(f"{SEGMENTS} attention is for padding-free training rows (no mask, no cache); got "
                           f"{'a mask' if attention_mask is not None else 'a KV cache'}")
    if position_ids is None or position_ids.dim() != 2:
        raise RuntimeError(f"{SEGMENTS} attention needs the batch's 2D position_ids to find its samples; this model "
                           "does not pass them to its attention: train it with data.packing: false")
    dtype = query.dtype
    with _cpu_float32(query) as upcast:
        if upcast:
            query, key, value = query.float(), key.float(), value.float()
        rows = []
        # split, not slicing: backward, a slice fills a zero gradient the size of the whole row for each sample,
        # split puts the samples' gradients together once.
        row_qkv = zip(*(t.split(1) for t in (query, key, value)), strict=True)
        for bounds, (q, k, v) in zip(segment_bounds(position_ids.expand(query.size(0), -1)), row_qkv, strict=True):
            sizes = [e - s for s, e in bounds]
            parts = [sdpa_attention_forward(module, *sample, None, is_causal=True, **kwargs)[0]
                     for sample in zip(*(t.split(sizes, dim=2) for t in (q, k, v)), strict=True)]
            rows.append(parts[0] if len(parts) == 1 else torch.cat(parts, dim=1))
        out = rows[0] if len(rows) == 1 else torch.cat(rows, dim=0)
    return out.to(dtype), None


@contextlib.contextmanager
def _cpu_float32(query: torch.Tensor) -> Iterator[bool]:
    """On a CPU, attend in float32 where SDPA would run in bf16/fp16 (yields whether to upcast).

    There PyTorch's half-precision flash attention is no faster than its float32 one, and under autocast it also
    costs the casts of q, k and v (which the rotary embedding has already made float32). One SmolLM2 sample forward
    + backward: 2.1x quicker in float32 at 128 tokens, 1.2x at 256, even at 512 (bench/results/attention_dtype.txt);
    a whole LoRA step on 512-token conversations, 5%. Float32 is also exact where bf16 rounds. Autocast is off inside
    (it would cast the inputs back to bf16); GPUs keep their fast half-precision kernels."""
    half = (torch.bfloat16, torch.float16)
    autocast_half = torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") in half
    if query.device.type != "cpu" or not (query.dtype in half or autocast_half):
        yield False
        return
    with torch.autocast("cpu", enabled=False):
        yield True


def _register() -> None:
    from transformers import AttentionInterface

    if SEGMENTS not in AttentionInterface._global_mapping:
        AttentionInterface.register(SEGMENTS, segment_sdpa)


def _text_attention_interface(model: torch.nn.Module) -> bool:
    """A text model whose layers call transformers' attention interface (and pass it `position_ids`)."""
    config = getattr(model, "config", None)
    return (getattr(model, "_supports_attention_backend", False) and config is not None
            and not hasattr(config, "vision_config"))


def supports_segments(model: torch.nn.Module) -> bool:
    """Whether the model runs its attention through transformers' attention interface with SDPA (the models whose
    layers pass `position_ids` on to it); others keep transformers' own handling of packed rows."""
    return packed_row_attention(model) == "segments"


def packed_row_attention(model: torch.nn.Module, attn_implementation: Optional[str] = None) -> Optional[str]:
    """How the model's attention keeps a padding-free row's samples apart with no block-diagonal mask, so that
    packing only saves work: "segments" (SDPA, run sample by sample here: `segment_attention`), "flash"
    (transformers' flash-attention kernels, `flash_attention_2`, `flash_attention_3` or a hub flash kernel, take the
    samples' boundaries and attend through their variable-length path: `PackedCollator(flash_kwargs=True)`), or None
    (eager attention, models outside the attention interface: a packed row would need the mask).
    `attn_implementation` stands in for the model's own (the planner's meta model runs SDPA where flash attention is
    asked for)."""
    implementation = attn_implementation or getattr(getattr(model, "config", None), "_attn_implementation", None) or ""
    if not _text_attention_interface(model):
        return None
    if "flash" in implementation and not implementation.startswith("paged"):  # paged: generation's cache only
        return "flash"
    return "segments" if implementation == "sdpa" else None


@contextlib.contextmanager
def segment_attention(model: torch.nn.Module) -> Iterator[bool]:
    """While inside, a padding-free model attends sample by sample (yields whether it was switched)."""
    if not supports_segments(model):
        yield False
        return
    _register()
    model.set_attn_implementation(SEGMENTS)
    try:
        yield True
    finally:
        model.set_attn_implementation("sdpa")
