"""The planner's activation ledger equals, byte for byte, what autograd keeps when a real tiny model runs Ember's
training forward and loss (`saved_tensors_hooks`, each storage counted once, parameters excluded)."""

from __future__ import annotations

import pytest

from ember.core.hardware import bf16_supported
from ember.planning.activations import Batch, estimate
from ember.planning.architecture import describe
from ember.planning.memory import Target, chunked_loss, packs, precision
from tests.planning.test_counts import real_model
from tests.planning.tracing import batch_inputs, saved_bytes

CPU = Target(gpu=False, devices=1, memory=1 << 40)
needs_bf16 = pytest.mark.skipif(not bf16_supported(), reason="bf16 autocast needs a CPU with AVX512-BF16")

CASES = {
    "lora": (),
    "lora-dropout": ("method.dropout=0.1",),
    "lora-layers": ("method.lora_layers=1",),
    "lora-packed": ("data.packing=true",),  # the default (packing null) packs too: samples attend one at a time
    "lora-padded": ("data.packing=false",),
    "full-padded": ("method.type=full", "data.packing=false"),
    "lora-bf16-weights": ("model.dtype=bfloat16",),
    "lora-modules-to-save": ("method.modules_to_save=[embed_tokens,lm_head]",),  # a wrapped head: plain loss
    "full": ("method.type=full",),
    "full-bf16-weights": ("method.type=full", "model.dtype=bfloat16"),
    "freeze": ("method.type=freeze", "method.trainable_layers=1"),
    "eager-lora": ("model.attn_implementation=eager",),
    "eager-full": ("model.attn_implementation=eager", "method.type=full"),
    "one-row": ("train.per_device_train_batch_size=1",),
}
AUTOCAST = {
    "lora-autocast": ("train.bf16=true",),
    "lora-autocast-dropout": ("train.bf16=true", "method.dropout=0.1"),
    "lora-autocast-packed": ("train.bf16=true", "data.packing=true"),
    "lora-autocast-padded": ("train.bf16=true", "data.packing=false"),
    "lora-bf16-weights-autocast": ("train.bf16=true", "model.dtype=bfloat16"),
    "full-autocast": ("train.bf16=true", "method.type=full"),
    "freeze-autocast": ("train.bf16=true", "method.type=freeze", "method.trainable_layers=1"),
}


def check(cfg, expect_chunked: bool = True) -> tuple[int, int]:
    """(traced, predicted) bytes for the planner's worst-case micro-batch of `cfg`, through the loss the planner
    says `ember train` takes."""
    shape = describe(cfg, gpu=False)
    prec = precision(cfg, shape, CPU, None)
    packed = packs(cfg, shape)
    batch = Batch(cfg.train.per_device_train_batch_size, cfg.data.max_length, packed, packed and shape.segments)
    chunked = chunked_loss(cfg, shape, None)
    assert chunked == expect_chunked
    model = real_model(cfg).train()
    inputs = batch_inputs(batch.samples, batch.length, batch.packed, shape.vocab, pad_last=3)
    traced = saved_bytes(model, inputs, prec.autocast, chunked=chunked)
    act = estimate(shape, batch, prec, checkpointing=False, chunked_loss=chunked)
    if chunked:  # the chunked loss keeps its gradients, computed with its value, and no logits
        return traced, act.saved + act.autocast_copies
    # the plain loss keeps its fp32 log-softmax (a third of the logits peak) until backward
    return traced, act.saved + act.autocast_copies + act.logits // 3


@pytest.mark.parametrize("name", list(CASES))
def test_ledger_equals_what_autograd_saves(tiny_cfg, name):
    traced, predicted = check(tiny_cfg(*CASES[name]), expect_chunked=name != "lora-modules-to-save")
    assert predicted == traced


@needs_bf16
@pytest.mark.parametrize("name", list(AUTOCAST))
def test_ledger_equals_what_autograd_saves_under_autocast(tiny_cfg, name):
    traced, predicted = check(tiny_cfg(*AUTOCAST[name]))
    assert predicted == traced


def test_ledger_equals_what_autograd_saves_for_qlora(tiny_cfg):
    pytest.importorskip("bitsandbytes")
    traced, predicted = check(tiny_cfg("method.type=qlora", "method.dropout=0.1"))
    assert predicted == traced


def test_masks_and_repeated_kv_appear_only_with_several_samples(tiny_cfg):
    one, two = (describe(tiny_cfg(f"train.per_device_train_batch_size={b}"), gpu=False) for b in (1, 2))
    prec = precision(tiny_cfg(), one, CPU, None)
    single = estimate(one, Batch(1, 16, False), prec, False).breakdown
    double = estimate(two, Batch(2, 16, False), prec, False).breakdown
    assert "attention masks (per layer)" not in single
    # 2 layers × a float mask per row (16 × 16 fp32)
    assert double["attention masks (per layer)"] == 2 * 2 * 16 * 16 * 4
    # q + k + v: k and v have 2 heads alone, 4 (repeated) with a mask; head_dim 16, fp32, 2 layers
    assert single["attention q/k/v"] == 2 * 16 * (64 + 2 * 32) * 4
    assert double["attention q/k/v"] == 2 * 32 * (64 + 2 * 64) * 4


def test_checkpointing_keeps_one_input_per_layer(tiny_cfg):
    cfg = tiny_cfg("method.type=full")
    shape = describe(cfg, gpu=False)
    prec = precision(cfg, shape, CPU, None)
    batch = Batch(2, 16, False)  # 32 tokens, 30 of them with logits
    ckpt = estimate(shape, batch, prec, checkpointing=True)
    inputs = 2 * 4 * 32 * 64  # 2 layers × their fp32 input hidden states
    top = (8 * 32  # input ids (the embedding trains)
           + 2 * 4 * 16 * 16  # rotary cos and sin for one row of 16 positions, head_dim 16
           + 4 * 32 * 64 + 4 * 32 + 4 * 32 * 64  # final norm: fp32 input, rsqrt, normalized (its weight trains)
           + 8 * 30 + 8 * 15 + 12  # loss targets, kept positions, two scalars
           + 4 * 30 * 64)  # LM head input at the kept positions (the head trains)
    assert ckpt.breakdown["checkpointed layer inputs"] == inputs
    assert ckpt.saved == inputs + top
    assert ckpt.layer == estimate(shape, batch, prec, checkpointing=False).layer


def test_torch_autocast_copies_weights_only_for_fp32_weights(tiny_cfg):
    if not bf16_supported():
        pytest.skip("bf16 autocast needs a CPU with AVX512-BF16")
    cfg = tiny_cfg("method.type=full", "train.bf16=true")
    shape = describe(cfg, gpu=False)
    act = estimate(shape, Batch(2, 16, False), precision(cfg, shape, CPU, None), False)
    layer_weights = 2 * (64 * 64 * 2 + 64 * 32 * 2 + 64 * 128 * 3)  # q, o, k, v, gate, up, down
    assert act.autocast_copies == 2 * (layer_weights + 320 * 64)  # every layer and the (tied) LM head, in bf16
    cfg16 = tiny_cfg("method.type=full", "train.bf16=true", "model.dtype=bfloat16")
    shape16 = describe(cfg16, gpu=False)
    assert estimate(shape16, Batch(2, 16, False), precision(cfg16, shape16, CPU, None), False).autocast_copies == 0


def test_flash_attention_is_planned_without_the_kernels_installed(tiny_cfg):
    cfg = tiny_cfg("model.attn_implementation=flash_attention_2")
    shape = describe(cfg, gpu=True)
    assert shape.attention == "flash"
    act = estimate(shape, Batch(2, 16, False), precision(cfg, shape, CPU, None), False).breakdown
    assert "attention masks (per layer)" not in act  # padding is handled inside the kernel, not by a mask
    assert act["attention q/k/v"] == 2 * 32 * (64 + 2 * 32) * 4  # k and v keep their 2 heads
