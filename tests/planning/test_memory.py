"""Every part of a plan, computed by hand for the tiny model (2 layers, hidden 64, 4 heads / 2 KV heads of 16,
MLP 128, vocabulary 320, untied head): 115,008 base parameters, 8,192 LoRA r4 parameters over the 7 projections."""

from __future__ import annotations

import pytest

from ember.planning import Target, ZeRO, plan
from ember.planning.memory import CUDA_CONTEXT, GIB, read_zero
from ember.planning.report import render

BASE = 2 * 320 * 64 + 2 * (4096 + 2048 + 2048 + 4096 + 3 * 8192 + 2 * 64) + 64  # embeddings, head, layers, norm
LORA = 2 * 4 * (64 + 64 + 96 + 96 + 128 + 192 * 3)  # r4: q, o (64+64), k, v (64+32), gate, up, down (64+128)
GPU = Target(gpu=True, devices=1, memory=80 * GIB)


def test_counts_by_hand(tiny_cfg):
    result = plan(tiny_cfg("model.dtype=auto"), GPU)
    assert (BASE, LORA) == (115008, 8192)
    assert (result.shape.total_params, result.shape.trainable_params) == (BASE + LORA, LORA)


def test_lora_on_a_gpu_part_by_part(tiny_cfg):
    """bf16 weights (`auto` on a GPU), fp32 LoRA, bf16 autocast (train.bf16 unset), 2 padded rows of 16 tokens."""
    result = plan(tiny_cfg("model.dtype=auto", "train.bf16=null", "data.packing=false"), GPU)
    T = 32  # tokens; 30 of them have logits (each row's first token is never a target)
    layer1 = (4 * T * 64 + 4 * T  # input norm: fp32 copy of the bf16 input, rsqrt
              + 3 * 2 * T * 64 + 3 * 2 * 4 * T  # q, k, v LoRA: bf16 copy of the input each, lora_A output
              + 2 * T * (64 + 2 * 64) + 2 * T * 64 + 4 * T * 4  # sdpa: q, k, v repeated (masked), output, lse
              + 2 * (2 * 16 * 16)  # the padding mask, as bf16, kept per layer
              + 2 * T * 64 + 2 * 4 * T  # o_proj LoRA
              + 4 * T * 64 + 4 * T  # post-attention norm
              + 2 * (2 * T * 64 + 2 * 4 * T)  # gate, up LoRA
              + 3 * 2 * T * 128  # SwiGLU: gate output, SiLU output, up output
              + 2 * T * 128 + 2 * 4 * T)  # down_proj LoRA
    layer0 = layer1 - (4 * T * 64 + 4 * T)  # its input (the frozen embedding's output) needs no gradient
    top = (2 * 2 * 16 * 16 + 4 * T * 64 + 4 * T  # rotary cos/sin, final norm
           + 8 * 15 + 2 * 15  # the chunked loss: trained positions (int64), the mask of trained rows (bool)
           + 2 * 30 * 64)  # and the gradient of the 30 trained rows' bf16 hidden states
    copies1 = 2 * 4 * (2 * 64 + 2 * 96 + 64 + 64 + 3 * 192)  # layer 1: bf16 copies of both LoRA matrices
    copies = copies1 + 2 * 4 * (64 + 32 + 32 + 2 * 64 + 3 * 192)  # layer 0: q, k, v's lora_A is not needed
    # the chunked loss: the 30 gathered rows of the bf16 last hidden state, then one chunk (all 30 rows) of bf16
    # logits and their fp32 copy, and the bf16 gradient (more than the 32 × 64 bf16 state they were gathered from)
    logits = 2 * 30 * 64 + (4 + 2) * 30 * 320
    assert result.memory.parts == {
        "weights": 2 * BASE,
        "trainable": 4 * LORA,
        "optimizer": 2 * 4 * LORA,  # AdamW: two fp32 states
        "activations": layer1 + layer0 + top,
        "autocast_copies": copies,
        "logits": logits,
        "backward_workspace": layer1 + copies1 - logits,  # layer 1's gradients in flight: more than the loss held
        "cuda_context": CUDA_CONTEXT,
    }
    assert result.memory.phase == "backward"
    step = 2 * BASE + 4 * LORA + 4 * LORA + 8 * LORA + 4 * LORA + CUDA_CONTEXT  # + gradients, foreach temporaries
    assert result.memory.phases == {"backward": sum(result.memory.parts.values()), "optimizer_step": step}
    assert result.memory.peak == sum(result.memory.parts.values())
    assert (result.tokens_per_micro_batch, result.tokens_per_step) == (32, 32)


# What packing the tiny plan's 2 × 16 tokens into one row adds above the layers: rotary cos/sin over 32 positions,
# not 16; the loss's positions (30, not 15) and its mask (1 × 31, not 2 × 15)
PACKED_TOP = 2 * 2 * (32 - 16) * 16 + 8 * (30 - 15) + (31 - 30)


def test_the_default_packs_a_row_whose_samples_attend_one_at_a_time(tiny_cfg):
    """data.packing null plans what `ember train` runs on an SDPA model: the 2 samples in one row, each attending
    to itself (ember.models.segment_attention): no mask, k and v at their own 2 heads; the rotary table spans the
    row, and the loss keeps one row's positions."""
    padded = plan(tiny_cfg("model.dtype=auto", "train.bf16=null", "data.packing=false"), GPU).memory.parts
    default = plan(tiny_cfg("model.dtype=auto", "train.bf16=null"), GPU)
    T = 32
    per_layer = 2 * T * (2 * 64 - 2 * 32) + 2 * (2 * 16 * 16)  # k, v repeated to 4 heads; the padding mask
    assert default.memory.parts == {**padded, "activations": padded["activations"] - 2 * per_layer + PACKED_TOP,
                                    "backward_workspace": padded["backward_workspace"] - per_layer}
    assert default.shape.segments and "(packed)" in render(default)


def test_the_default_packs_a_flash_attention_model_without_a_mask(tiny_cfg):
    """With a flash-attention kernel `ember train` packs by default too (the kernel reads the samples off
    `position_ids`): the plan is `data.packing: true`'s. Flash attention keeps no mask either way, so packing changes
    only the rotary table (one row of 32 positions) and the loss's positions and mask."""
    flash = ("model.dtype=auto", "train.bf16=null", "model.attn_implementation=flash_attention_2")
    default = plan(tiny_cfg(*flash), GPU)
    padded = plan(tiny_cfg(*flash, "data.packing=false"), GPU).memory.parts
    assert default.shape.packs_without_mask and not default.shape.segments
    assert default.memory.parts == plan(tiny_cfg(*flash, "data.packing=true"), GPU).memory.parts
    assert default.memory.parts == {**padded, "activations": padded["activations"] + PACKED_TOP}
    assert "(packed)" in render(default)
    eager = plan(tiny_cfg("model.dtype=auto", "train.bf16=null", "model.attn_implementation=eager"), GPU)
    assert not eager.shape.packs_without_mask and "(packed)" not in render(eager)


def test_the_loss_is_planned_as_the_trainer_takes_it(tiny_cfg):
    """The chunked loss for the causal-LM stages; the plain loss (12 bytes per logit: bf16 logits, the fp32
    log-softmax and its two fp32 gradients) where the trainer keeps it: preference stages, ZeRO-3 / FSDP shards,
    an adapter-wrapped head."""
    from ember.planning.activations import Batch, estimate
    from ember.planning.architecture import describe
    from ember.planning.memory import chunked_loss, precision

    cfg = tiny_cfg("model.dtype=auto")
    shape = describe(cfg, gpu=True)
    assert shape.projected_logits and chunked_loss(cfg, shape, None) and chunked_loss(cfg, shape, ZeRO(2))
    assert not chunked_loss(cfg, shape, ZeRO(3))
    assert not chunked_loss(tiny_cfg("model.dtype=auto", "train.extra={fsdp: full_shard}"), shape, None)
    assert not chunked_loss(tiny_cfg("model.dtype=auto", "stage=dpo"), shape, None)
    wrapped = tiny_cfg("model.dtype=auto", "method.modules_to_save=[lm_head]")
    assert not describe(wrapped, gpu=True).projected_logits
    plain = estimate(shape, Batch(2, 16, False), precision(cfg, shape, GPU, None), False, chunked_loss=False)
    assert plain.logits == 12 * 30 * 320
    assert plan(cfg, GPU, zero=ZeRO(3)).memory.activations.logits == 12 * 30 * 320


def test_the_planner_chunks_the_loss_as_training_does():
    from ember.planning import activations
    from ember.training import chunked_loss

    assert activations.CHUNK_ELEMENTS == chunked_loss.CHUNK_ELEMENTS
    assert (activations.BLOCK_ROWS, activations.BLOCK_VOCAB) == (chunked_loss.BLOCK_ROWS, chunked_loss.BLOCK_VOCAB)


def test_the_planner_packs_the_stages_that_training_packs_by_default():
    from ember.config.validate import PREFERENCE_STAGES
    from ember.training.stages import STAGES

    # ember.planning.memory.packs cannot import the training stages (a higher layer): it names the preference stages
    assert {name for name, stage in STAGES.items() if not stage.packs_by_default()} == set(PREFERENCE_STAGES)


def test_accumulation_ddp_and_optimizers(tiny_cfg):
    base = plan(tiny_cfg("model.dtype=auto"), GPU).memory.parts
    accumulating = plan(tiny_cfg("model.dtype=auto", "train.gradient_accumulation_steps=4"), GPU)
    assert accumulating.memory.parts == {**base, "gradients": 4 * LORA}  # kept between micro-batches
    ddp = plan(tiny_cfg("model.dtype=auto"), Target(True, 4, 80 * GIB))
    assert ddp.memory.parts == {**base, "ddp_buckets": 4 * LORA}
    assert ddp.tokens_per_step == 4 * 32
    eight_bit = plan(tiny_cfg("model.dtype=auto", "train.optim=paged_adamw_8bit"), GPU).memory.parts
    assert eight_bit["optimizer"] == 2 * LORA
    sgd = plan(tiny_cfg("model.dtype=auto", "train.optim=sgd"), GPU).memory.parts
    assert "optimizer" not in sgd


def test_full_tuning_on_cpu_in_fp32(tiny_cfg):
    result = plan(tiny_cfg("method.type=full", "train.bf16=false"), Target(False, 1, 64 * GIB))
    parts = result.memory.parts
    assert (parts["trainable"], parts["optimizer"]) == (4 * BASE, 8 * BASE)
    assert "weights" not in parts and "cuda_context" not in parts and "autocast_copies" not in parts
    assert result.memory.phases["optimizer_step"] == 4 * BASE * 4 + 2 * 4 * 320 * 64  # + two embedding-sized temporaries


def test_zero_stages_follow_deepspeeds_estimators(tiny_cfg):
    """Full tuning, bf16, 4 GPUs: DeepSpeed's own functions give the same model-state bytes."""
    ds2 = pytest.importorskip("deepspeed.runtime.zero.stage_1_and_2")
    ds3 = pytest.importorskip("deepspeed.runtime.zero.stage3")
    cfg = tiny_cfg("model.dtype=auto", "train.bf16=null", "method.type=full")
    gpus = Target(True, 4, 80 * GIB)
    states = ("weights", "trainable", "gradients", "optimizer", "zero3_gathered")

    def model_states(zero):
        return sum(plan(cfg, gpus, zero=zero).memory.parts.get(k, 0) for k in states)

    largest = 320 * 64  # the embedding (or the head): the largest module ZeRO-3 gathers
    assert model_states(ZeRO(2)) == ds2.estimate_zero2_model_states_mem_needs(BASE, 4, 1, cpu_offload=False)[1]
    assert model_states(ZeRO(2, offload_optimizer=True)) == ds2.estimate_zero2_model_states_mem_needs(BASE, 4, 1)[1]
    assert model_states(ZeRO(3)) == ds3.estimate_zero3_model_states_mem_needs(BASE, largest, 4, 1, cpu_offload=False)[1]
    assert model_states(ZeRO(3, offload_optimizer=True)) == ds3.estimate_zero3_model_states_mem_needs(
        BASE, largest, 4, 1, cpu_offload=True, cpu_offload_params=False)[1]
    assert model_states(ZeRO(3, offload_optimizer=True, offload_params=True)) == 4 * largest


def test_zero_by_hand_and_deepspeed_casts_to_16_bits(tiny_cfg):
    cfg = tiny_cfg("model.dtype=auto", "train.bf16=null")  # LoRA: the frozen base is only partitioned by ZeRO-3
    two = plan(cfg, Target(True, 2, 80 * GIB), zero=ZeRO(2)).memory.parts
    assert (two["weights"], two["trainable"], two["gradients"], two["optimizer"]) == (
        2 * BASE, 2 * LORA, (2 + 4) * LORA // 2, 12 * LORA // 2)
    three = plan(cfg, Target(True, 2, 80 * GIB), zero=ZeRO(3)).memory.parts
    assert (three["weights"], three["trainable"], three["gradients"], three["zero3_gathered"]) == (
        2 * BASE // 2, 2 * LORA // 2, 4 * LORA // 2, 4 * 320 * 64)
    assert "autocast_copies" not in three  # DeepSpeed's bf16 engine casts the adapters too: no autocast


def test_read_zero_understands_the_shipped_configs():
    assert read_zero("examples/deepspeed/zero2.json") == ZeRO(2, source="examples/deepspeed/zero2.json")
    assert read_zero("examples/deepspeed/zero3.json").stage == 3
    assert read_zero(None) is None


def test_a_frozen_fp32_head_on_a_cpu_is_planned_a_block_at_a_time(tiny_cfg):
    """fp32 on a CPU: LoRA's frozen head takes the loss's online path (ember.training.chunked_loss), one block of 30
    rows x the whole 320-column vocabulary of fp32 logits, the rows' accumulator, the targets' embeddings and their
    scaled copy; full tuning's trained head keeps the chunk path (fp32 logits and their gradient, and one
    chunk's contribution to the head's gradient). Both beside the 30 trained rows gathered from the last hidden state."""
    import torch

    from ember.training.chunked_loss import _online

    cpu = Target(gpu=False, devices=1, memory=64 * GIB)
    rows = 4 * 30 * 64
    lora = plan(tiny_cfg("train.bf16=false", "data.packing=false"), cpu)
    assert lora.memory.activations.logits == rows + 4 * 30 * 320 + 3 * 4 * 30 * 64
    full = plan(tiny_cfg("train.bf16=false", "data.packing=false", "method.type=full"), cpu)
    assert full.memory.activations.logits == rows + 8 * 30 * 320 + 4 * 320 * 64
    # the trainer decides the same way for these heads
    hidden, head = torch.zeros(30, 64), torch.zeros(320, 64)
    assert _online(hidden, head, torch.float32) and not _online(hidden, head.requires_grad_(), torch.float32)
