"""Fits / does not fit, and the suggested change: applied to the config and planned again from scratch, it fits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ember.planning import Target, plan, render, summary_line, to_json
from ember.planning.memory import GIB

ROOT = Path(__file__).resolve().parents[2]


def gpu(memory: int, devices: int = 1) -> Target:
    return Target(gpu=True, devices=devices, memory=memory)


def peak(cfg, target) -> int:
    """What must fit: the peak, plus the allocator's headroom on a GPU."""
    return plan(cfg, target, suggest=False).needs


def replan(tiny_cfg, base: tuple[str, ...], result, target):
    """The suggestion's overrides applied to the original config, planned again as `ember plan` would."""
    return plan(tiny_cfg(*base, *result.suggestion.overrides), target, suggest=False)


def test_fits_exactly_at_the_peak(tiny_cfg):
    cfg = tiny_cfg()
    need = peak(cfg, gpu(GIB))
    assert plan(cfg, gpu(need)).fits
    short = plan(cfg, gpu(need - 1))
    assert not short.fits and short.suggestion is not None


def test_a_smaller_micro_batch_keeps_the_global_batch(tiny_cfg):
    base = ("train.per_device_train_batch_size=8", "data.max_length=64")
    half = peak(tiny_cfg("train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=2",
                         "data.max_length=64"), gpu(GIB))
    assert half < peak(tiny_cfg(*base), gpu(GIB))
    result = plan(tiny_cfg(*base), gpu(half))
    assert not result.fits
    assert result.suggestion.overrides == ["train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=2"]
    again = replan(tiny_cfg, base, result, gpu(half))
    assert again.fits and again.needs == result.suggestion.plan.needs == half
    assert again.tokens_per_step == result.tokens_per_step == 8 * 64


def test_checkpointing_when_no_micro_batch_is_small_enough(tiny_cfg):
    base = ("method.type=full", "train.per_device_train_batch_size=1", "data.max_length=512")
    budget = peak(tiny_cfg(*base, "train.gradient_checkpointing=true"), gpu(GIB))
    result = plan(tiny_cfg(*base), gpu(budget))
    assert not result.fits
    assert result.suggestion.overrides == ["train.gradient_checkpointing=true"]
    assert replan(tiny_cfg, base, result, gpu(budget)).fits


def test_zero3_over_four_gpus_is_re_planned_from_its_json(tiny_cfg, monkeypatch):
    monkeypatch.chdir(ROOT)  # the suggestion names examples/deepspeed/zero3.json
    base = ("method.type=full", "train.bf16=null", "model.dtype=auto", "train.gradient_checkpointing=true",
            "train.per_device_train_batch_size=1")
    four = gpu(GIB, devices=4)
    zero3 = peak(tiny_cfg(*base, "train.deepspeed=examples/deepspeed/zero3.json"), four)
    zero2 = peak(tiny_cfg(*base, "train.deepspeed=examples/deepspeed/zero2.json"), four)
    assert zero3 < zero2
    result = plan(tiny_cfg(*base), gpu(zero3, devices=4))
    assert result.suggestion.overrides == ["train.deepspeed=examples/deepspeed/zero3.json"]
    assert result.suggestion.description == "DeepSpeed ZeRO-3"
    again = replan(tiny_cfg, base, result, gpu(zero3, devices=4))
    assert again.fits and again.zero.stage == 3


def test_qlora_when_the_base_weights_do_not_fit(tiny_cfg):
    pytest.importorskip("bitsandbytes")
    # wide layers and short rows: the weights, not the activations, are what does not fit
    base = ("train.bf16=null", "model.dtype=auto", "train.gradient_checkpointing=true",
            "train.per_device_train_batch_size=1", "data.max_length=8", "model.config_overrides.hidden_size=512",
            "model.config_overrides.intermediate_size=2048", "model.config_overrides.num_attention_heads=8",
            "model.config_overrides.num_key_value_heads=8")
    budget = peak(tiny_cfg(*base, "method.type=qlora"), gpu(GIB))
    result = plan(tiny_cfg(*base), gpu(budget))
    assert result.suggestion.overrides == ["method.type=qlora"]
    assert replan(tiny_cfg, base, result, gpu(budget)).fits


def test_nothing_fits(tiny_cfg):
    result = plan(tiny_cfg(), gpu(1024))
    assert not result.fits and result.searched and result.suggestion is None
    assert "no change tried fits" in render(result)
    assert summary_line(result).endswith("does NOT fit")


def test_json_shape(tiny_cfg):
    result = plan(tiny_cfg("train.per_device_train_batch_size=8", "data.max_length=64"),
                  gpu(peak(tiny_cfg("train.per_device_train_batch_size=4", "train.gradient_accumulation_steps=2",
                                    "data.max_length=64"), gpu(GIB))))
    data = json.loads(json.dumps(to_json(result)))
    assert data["peak_bytes_per_device"] == result.memory.peak == sum(data["parts"].values())
    assert data["fits"] is False
    assert set(data["parts"]) == {"weights", "trainable", "optimizer", "activations", "logits", "backward_workspace",
                                  "cuda_context"}
    assert all(isinstance(v, int) and v > 0 for v in data["parts"].values())
    assert data["phase"] == "backward" and set(data["phases"]) == {"backward", "optimizer_step"}
    assert data["target"] == {"kind": "gpu", "devices": 1, "memory_bytes_per_device": result.target.memory,
                              "measure": "GPU memory per device"}
    assert data["params"] == {"total": result.shape.total_params, "trainable": result.shape.trainable_params}
    assert (data["tokens_per_micro_batch"], data["tokens_per_step"]) == (512, 512)
    assert data["deepspeed"] is None
    assert data["suggestion"]["fits"] is True
    assert data["suggestion"]["overrides"] == ["train.per_device_train_batch_size=4",
                                               "train.gradient_accumulation_steps=2"]
    assert data["suggestion"]["peak_bytes_per_device"] <= result.target.memory
    assert data["reserved_bytes_per_device"] == result.memory.peak + result.headroom
    # the GPU allocator's share (measured on an H200), on all but the CUDA context
    assert result.headroom == int((result.memory.peak - data["parts"]["cuda_context"]) * 0.25)


def test_text_names_the_measure_and_every_part(tiny_cfg):
    result = plan(tiny_cfg(), Target(gpu=False, devices=1, memory=8 * GIB))
    text = render(result, "run.yaml")
    assert "peak RSS per process above the interpreter and its libraries" in text
    assert "fits on CPU, 8.0 GiB RAM" in text
    for name in result.memory.parts:
        assert f"    {name} " in text
    assert summary_line(result) == f"plan: {result.memory.peak / GIB:.2f} GiB peak per process on CPU, 8.0 GiB RAM: " \
                                   f"fits; up to 32 tokens per step"


def test_a_qlora_plan_on_a_cpu_names_the_load_above_its_peak(tiny_cfg):
    cpu = Target(gpu=False, devices=1, memory=8 * GIB)
    on_cpu = [n for n in plan(tiny_cfg("method.type=qlora"), cpu, suggest=False).notes if "memory map" in n]
    assert len(on_cpu) == 1 and "count in RSS while it loads" in on_cpu[0]
    assert not [n for n in plan(tiny_cfg(), cpu, suggest=False).notes if "memory map" in n]  # LoRA keeps the map
    assert not [n for n in plan(tiny_cfg("method.type=qlora"), gpu(80 * GIB), suggest=False).notes
                if "memory map" in n]
