"""What the forward pass keeps for backward, tensor by tensor, for one micro-batch.

The rules follow what autograd saves in a pre-norm decoder layer (Llama, Qwen2, Mistral, ...) as transformers,
peft and Ember's loss run it: a tensor is saved only when a gradient that needs it will be computed, a tensor saved
by several ops counts once, and every cast makes a new tensor. tests/planning/test_activations.py checks these
rules against the tensors autograd really saves (`torch.autograd.graph.saved_tensors_hooks`) on tiny models.

- RMSNorm upcasts its input to fp32; it keeps that fp32 input and the per-token rsqrt when the input needs a
  gradient, and the normalized tensor only when its own weight trains.
- A linear layer keeps its input when its weight trains. Under autocast an fp32 input is cast to bf16 once per
  layer, so q, k and v each keep their own copy; an fp32 weight is also cast and that copy is kept whenever the
  input needs a gradient (for full tuning and LoRA alike): `autocast_copies`.
- A LoRA branch keeps its own input (a cast copy when the dtypes differ; dropout's noise and output with dropout)
  and the rank-r output of `lora_A`. A 4-bit (QLoRA) matmul keeps nothing: bitsandbytes recomputes the weight.
- sdpa keeps q, k, v, its output and a per-head log-sum-exp. With a mask (padded rows, or several packed samples)
  transformers repeats k and v to every head, and each layer converts the boolean mask to a float one it keeps.
  Packed samples that attend one at a time (Ember's padding-free batches on SDPA models) need no mask; on a CPU
  they attend in fp32.
- Eager attention keeps the attention probabilities (fp32 softmax, plus the cast when computing in half).
- The loss, one of two ways (`chunked_loss`):
  - Ember's chunked loss (ember.training.chunked_loss; causal-LM stages, when the logits are the output embedding
    applied to the last hidden state and that embedding is whole on the device): no logits. The loss gathers the
    trained rows of the decoder's last hidden state, computes their gradient (and the head's, fp32, when it
    trains) chunk by chunk, and keeps those for backward; at its peak one chunk's fp32 logits and their gradient
    exist, or for a frozen fp32 head on a CPU (its online path) one block of 1024 rows by 1024 columns.
  - Otherwise logits only at trained positions (`logits_to_keep`), upcast to fp32 by the loss: log-softmax keeps
    its fp32 output, and its backward holds two more fp32 tensors of that size (12 bytes each).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Optional

from ember.planning.architecture import Layer, Linear, ModelShape

# the logits per chunk of ember.training.chunked_loss, and its online path's block of rows and vocabulary columns (the
# planner cannot import training, a higher layer; tests/planning/test_memory.py checks that they agree)
CHUNK_ELEMENTS = 1 << 23
BLOCK_ROWS = 1024
BLOCK_VOCAB = 1024


@dataclass(frozen=True)
class Batch:
    """The largest micro-batch a run can meet: `samples` rows of `length` tokens, every next token trained."""

    samples: int
    length: int
    packed: bool
    segmented: bool = False  # packed, and its samples attend one at a time (no block mask): ModelShape.segments

    @property
    def rows(self) -> int:
        return 1 if self.packed else self.samples

    @property
    def row_len(self) -> int:
        return self.samples * self.length if self.packed else self.length

    @property
    def tokens(self) -> int:
        return self.samples * self.length

    @property
    def logit_positions(self) -> int:
        """Logits computed per micro-batch: each sample's first token is never a target (packed: of the sample
        before; padded: positions are the union over rows, at most length - 1)."""
        return self.samples * (self.length - 1)

    @property
    def mask_elements(self) -> int:
        """A padded batch of several rows carries a padding mask; a packed row of several samples a block mask,
        unless its samples attend one at a time."""
        if self.samples < 2 or self.segmented:
            return 0
        return self.rows * self.row_len * self.row_len


@dataclass(frozen=True)
class Precision:
    """How tensors are stored while training on the target."""

    compute_bytes: int  # matmul outputs and attention inputs (2 for bf16/fp16 compute, 4 for fp32)
    autocast: bool  # mixed precision: fp32 weights and inputs are cast per op
    residual_bytes: int  # hidden states between layers
    adapter_bytes: int  # LoRA weights
    cuda: bool  # dropout keeps a 1-byte mask on CUDA, a noise tensor of the input's dtype on a CPU
    weight_bytes: Optional[int] = None  # every weight cast to this (DeepSpeed's bf16 engine); None: as loaded


@dataclass
class Activations:
    """Bytes for one micro-batch (per device)."""

    saved: int  # kept for backward at the end of the forward pass
    autocast_copies: int  # half-precision copies of fp32 weights that autocast made and backward needs
    logits: int  # the loss at its peak, beyond `saved`: the fp32 logits path's, or the chunked loss's working memory
    layer: int  # the most one decoder layer keeps (recomputed at a time with gradient checkpointing)
    breakdown: dict[str, int]


class _Ledger:
    def __init__(self) -> None:
        self._saved: dict[object, tuple[str, int]] = {}
        self._ids = itertools.count()
        self.copies = 0

    def keep(self, key: str, label: str, nbytes: int) -> None:
        """A tensor that several ops may save: counted once."""
        self._saved.setdefault(key, (label, nbytes))

    def new(self, label: str, nbytes: int) -> None:
        self._saved[next(self._ids)] = (label, nbytes)

    def total(self) -> int:
        return sum(n for _, n in self._saved.values())

    def by_label(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for label, n in self._saved.values():
            out[label] = out.get(label, 0) + n
        return out


def estimate(shape: ModelShape, batch: Batch, prec: Precision, checkpointing: bool,
             chunked_loss: bool = False) -> Activations:
    region = shape.region()
    layers = [_layer(shape, layer, batch, prec, first=(k == 0 and not shape.embedding_trainable))
              for k, layer in enumerate(region)]
    top = _model_level(shape, batch, prec, bool(region), chunked_loss)
    breakdown = top.by_label()
    if checkpointing:
        # Non-reentrant checkpointing keeps each layer's input and recomputes one layer at a time in backward.
        inputs = len(region) * prec.residual_bytes * batch.tokens * shape.hidden
        saved = top.total() + inputs
        breakdown["checkpointed layer inputs"] = inputs
        copies = top.copies
    else:
        saved = top.total() + sum(led.total() for led in layers)
        for led in layers:
            for label, n in led.by_label().items():
                breakdown[label] = breakdown.get(label, 0) + n
        copies = top.copies + sum(led.copies for led in layers)
    if not region:
        logits = 0
    elif chunked_loss:
        logits = _chunked_loss_peak(shape, batch, prec)
    else:
        logits = 12 * batch.logit_positions * shape.vocab
    breakdown = {k: v for k, v in breakdown.items() if v}
    return Activations(saved=saved, autocast_copies=copies, logits=logits,
                       layer=max((led.total() + led.copies for led in layers), default=0), breakdown=breakdown)


def _chunked_loss_peak(shape: ModelShape, batch: Batch, prec: Precision) -> int:
    """The chunked loss's working memory beyond what it keeps for backward: the trained rows gathered from the
    decoder's last hidden state (which lives until they are, unless the final norm keeps it anyway), then one
    chunk's logits (as computed, then fp32; the first freed before the gradient is made) and their gradient in the
    compute dtype, the chunk's rows cast to it; with a trained head, its weight cast to the compute dtype and each
    chunk's contribution to its gradient (then upcast). A frozen fp32 head on a CPU takes the online path instead:
    one block of fp32 logits, the block's rows' accumulator, and at the end the targets' embeddings and their scaled
    copy."""
    c, r, h, v = prec.compute_bytes, prec.residual_bytes, shape.hidden, shape.vocab
    last_hidden = 0 if shape.final_norm_trainable else r * batch.tokens * h
    head_bytes = prec.weight_bytes or shape.lm_head_weight_bytes
    if not prec.cuda and not prec.autocast and c == r == head_bytes == 4 and not shape.lm_head_trainable:
        rows = min(batch.logit_positions, BLOCK_ROWS)
        work = 4 * rows * min(v, BLOCK_VOCAB) + 3 * 4 * rows * h
    else:
        rows = min(batch.logit_positions, max(1, CHUNK_ELEMENTS // v))
        work = (4 + c) * rows * v + (c * rows * h if c != r else 0)
        if shape.lm_head_trainable:
            work += (c * v * h if c != head_bytes else 0) + c * v * h + (4 * v * h if c != 4 else 0)
    return r * batch.logit_positions * h + max(last_hidden, work)


def _layer(shape: ModelShape, layer: Layer, batch: Batch, prec: Precision, first: bool) -> _Ledger:
    led = _Ledger()
    T, h, r, c = batch.tokens, shape.hidden, prec.residual_bytes, prec.compute_bytes
    by_role = {role: [lin for lin in layer.linears if lin.role == role]
               for role in ("attn_in", "attn_out", "mlp_in", "mlp_out")}
    x_rg = not first
    y1_rg = _norm(led, "x_in", x_rg, layer.norm_trainable, T, h, r)
    attn_rg = any([_linear(led, lin, "y1", r, y1_rg, T, prec) for lin in by_role["attn_in"]]) or y1_rg
    out_bytes = _attention(led, shape, batch, prec) if attn_rg else c
    out_rg = any([_linear(led, lin, "attn_out", out_bytes, attn_rg, T, prec) for lin in by_role["attn_out"]]) or attn_rg
    y2_rg = _norm(led, "x_mid", out_rg, layer.norm_trainable, T, h, r)
    mlp_rg = any([_linear(led, lin, "y2", r, y2_rg, T, prec) for lin in by_role["mlp_in"]]) or y2_rg
    down = by_role["mlp_out"]
    inner = down[0].in_features if down else 0
    if mlp_rg and inner:
        gated = len(by_role["mlp_in"]) >= 2 or any(lin.out_features == 2 * inner for lin in by_role["mlp_in"])
        # gated (SwiGLU): the activation's input and output and the up projection; plain: the activation's input
        led.new("mlp intermediates", (3 if gated else 1) * c * T * inner)
    for lin in down:
        _linear(led, lin, "mlp_hidden", c, mlp_rg, T, prec)
    return led


def _norm(led: _Ledger, key: str, x_rg: bool, trainable: bool, T: int, h: int, r: int) -> bool:
    if x_rg:
        led.keep(key if r == 4 else key + "/fp32", "norm inputs (fp32)", 4 * T * h)
        led.new("norm rsqrt", 4 * T)
    if trainable:
        led.new("norm outputs", r * T * h)
    return x_rg or trainable


def _linear(led: _Ledger, lin: Linear, x_key: str, x_bytes: int, x_rg: bool, T: int, prec: Precision) -> bool:
    """Record what one projection keeps; True when its output needs a gradient."""
    n = lin.in_features * T
    weight_bytes = prec.weight_bytes or lin.weight_bytes
    trains_base = lin.base_trainable and not lin.quantized
    if trains_base:
        if prec.autocast and x_bytes == 4:
            led.new("linear inputs", 2 * n)
        else:
            led.keep(x_key, "linear inputs", x_bytes * n)
    if x_rg and not lin.quantized and prec.autocast and weight_bytes == 4:
        led.copies += 2 * lin.in_features * lin.out_features
    if lin.lora_rank:
        lb = prec.adapter_bytes
        cast = prec.autocast and lb == 4  # lora_A casts its fp32 input to bf16: a new tensor
        if lin.lora_dropout > 0:
            if x_rg:  # the mask (noise) scales the input's gradient only
                led.new("LoRA dropout masks", (1 if prec.cuda else lb) * n)
            led.new("LoRA inputs", (2 if cast else lb) * n)
        elif cast:
            led.new("LoRA inputs", 2 * n)
        elif x_bytes == lb:
            led.keep(x_key, "linear inputs", lb * n)
        else:
            led.new("LoRA inputs", lb * n)  # peft casts the input to the adapter's dtype
        led.new("LoRA A outputs", (2 if prec.autocast else lb) * lin.lora_rank * T)
        if cast:
            led.copies += 2 * lin.lora_rank * (lin.out_features + (lin.in_features if x_rg else 0))
    return x_rg or trains_base or bool(lin.lora_rank)


def _attention(led: _Ledger, shape: ModelShape, batch: Batch, prec: Precision) -> int:
    """Returns the bytes per element of the output projection's input."""
    T, c, d = batch.tokens, prec.compute_bytes, shape.head_dim
    q = shape.heads * d
    if shape.attention == "eager":
        led.new("attention q/k/v", 3 * c * T * q)  # k and v repeated to every head
        scores = batch.rows * shape.heads * batch.row_len * batch.row_len
        led.new("attention probabilities", (4 if c == 4 else 4 + c) * scores)
        return c  # o_proj's input is a separate copy, kept by o_proj if needed
    if batch.segmented and not prec.cuda and c < 4:
        # Ember's per-sample attention runs in fp32 on a CPU (ember.models.segment_attention): q, k and v upcast,
        # fp32 outputs, cast back to the dtype q came in (the rotary embedding promotes it to the residual stream's).
        # Where that is fp32 and there is one sample, o_proj reads SDPA's own output.
        led.new("attention q/k/v", 4 * T * (q + 2 * shape.kv_heads * d))
        out_bytes = max(c, prec.residual_bytes)
        if batch.samples > 1 or out_bytes != 4:
            led.new("attention outputs", 4 * T * q)
        else:
            led.keep("attn_out", "attention outputs", 4 * T * q)
        led.new("attention log-sum-exp", 4 * T * shape.heads)
        return out_bytes
    masked = shape.attention == "sdpa" and batch.mask_elements > 0
    kv = q if masked else shape.kv_heads * d
    led.new("attention q/k/v", c * T * (q + 2 * kv))
    if batch.segmented and batch.samples > 1:
        # Each sample's SDPA keeps its own output; the row the output projection reads is their concatenation, a
        # tensor of its own (kept when that projection needs its input).
        led.new("attention outputs", c * T * q)
    else:
        led.keep("attn_out", "attention outputs", c * T * q)
    led.new("attention log-sum-exp", 4 * T * shape.heads)
    if masked:
        led.new("attention masks (per layer)", c * batch.mask_elements)
    return c


def _model_level(shape: ModelShape, batch: Batch, prec: Precision, region: bool, chunked_loss: bool) -> _Ledger:
    led = _Ledger()
    T, h, r = batch.tokens, shape.hidden, prec.residual_bytes
    if shape.embedding_trainable:
        led.new("input ids", 8 * T)
    if not region:
        return led
    led.new("rotary cos/sin", 2 * r * batch.row_len * shape.head_dim)
    _norm(led, "x_final", True, shape.final_norm_trainable, T, h, r)
    kept = batch.logit_positions * h
    head_bytes = prec.weight_bytes or shape.lm_head_weight_bytes
    if chunked_loss:
        # the trained positions (the empty slice asked of the model shares their storage), the mask that gathers
        # the trained rows, and the gradients the loss computed with its value: the rows' (in the hidden states'
        # dtype) and, when the head trains, the head's (fp32)
        led.new("loss targets", 8 * (batch.logit_positions // batch.rows) + batch.rows * (batch.row_len - 1))
        led.new("loss gradients", r * kept + (4 * shape.vocab * h if shape.lm_head_trainable else 0))
    else:
        # the loss's targets and the kept positions (int64), and two scalars (nll's total weight, the token count)
        led.new("loss targets", 8 * kept // h + 8 * (batch.logit_positions // batch.rows) + 12)
        if shape.lm_head_trainable:
            led.new("LM head input", (2 if prec.autocast and r == 4 else r) * kept)
    if prec.autocast and head_bytes == 4:
        # the head's 16-bit copy that autocast makes and backward keeps (with the chunked loss the model calls its
        # head on no rows, and that copy lives as long as the outputs, through the loss: counted here, a little
        # high for the start of backward); with the chunked loss a frozen head has a second, cast once per run for
        # the loss (EmberTrainer._projection_weight)
        frozen_cast = chunked_loss and not shape.lm_head_trainable
        led.copies += (2 if frozen_cast else 1) * 2 * shape.vocab * h
    return led
