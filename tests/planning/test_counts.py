"""The meta-device model counts exactly what the real, instantiated model holds after `apply_method`."""

from __future__ import annotations

import pytest
import torch

from ember.models.adapters import apply_method, parameter_counts, quantization_config, store_frozen_linears_in
from ember.models.loading import detect_family, load_model
from ember.planning.architecture import describe, stores_frozen_in_bf16


def real_model(cfg):
    torch.manual_seed(0)
    model = load_model(cfg.model, quantization_config=quantization_config(cfg.method, torch.float32))
    model.config.use_cache = False
    model = apply_method(model, cfg.method, detect_family("llama"), False)
    if stores_frozen_in_bf16(cfg, gpu=False):  # as ember.training.run does
        store_frozen_linears_in(model, torch.bfloat16)
    return model


def groups_of(model) -> dict[tuple[bool, str], tuple[int, int]]:
    """numel and bytes per (trainable, dtype) of a real model; bitsandbytes weights with their quantization state."""
    out: dict[tuple[bool, str], list[int]] = {}
    for p in model.parameters():
        dtype = str(p.dtype).removeprefix("torch.")
        numel, nbytes = p.numel(), p.numel() * p.element_size()
        state = getattr(p, "quant_state", None)
        if state is not None:  # Params4bit: numel counts packed bytes; the planner counts the weights they hold
            dtype, numel = state.quant_type, state.shape.numel()
            extra = [state.absmax, state.code] + ([state.state2.absmax, state.state2.code, state.offset]
                                                 if state.nested else [])
            nbytes += sum(t.numel() * t.element_size() for t in extra)
        elif getattr(p, "SCB", None) is not None:  # LLM.int8 weight and its row scales
            dtype, nbytes = "int8", nbytes + p.SCB.numel() * p.SCB.element_size()
        entry = out.setdefault((p.requires_grad, dtype), [0, 0])
        entry[0] += numel
        entry[1] += nbytes
    return {k: tuple(v) for k, v in out.items()}


@pytest.mark.parametrize("overrides", [
    (),
    ("method.lora_layers=1",),
    ("method.targets=[q_proj,v_proj]", "method.rank=8"),
    ("method.modules_to_save=[embed_tokens,lm_head]",),
    ("method.type=full",),
    ("method.type=freeze", "method.trainable_layers=1"),
    ("method.type=freeze", "method.trainable_modules=[mlp.down_proj]"),
    ("model.dtype=bfloat16",),
    ("model.dtype=bfloat16", "method.type=full"),
], ids=["lora", "lora_layers", "targets", "modules_to_save", "full", "freeze", "freeze-modules", "lora-bf16",
        "full-bf16"])
def test_counts_and_bytes_match_the_instantiated_model(tiny_cfg, overrides):
    cfg = tiny_cfg(*overrides)
    shape = describe(cfg, gpu=False)
    model = real_model(cfg)
    assert (shape.trainable_params, shape.total_params) == parameter_counts(model)
    assert {(g.trainable, g.dtype): (g.numel, g.bytes) for g in shape.groups} == groups_of(model)


def test_lora_layers_and_targets_decide_which_linears_get_adapters(tiny_cfg):
    shape = describe(tiny_cfg("method.lora_layers=1", "method.targets=[q_proj,down_proj]", "method.rank=8"), gpu=False)
    adapted = [(layer.index, lin.name, lin.lora_rank) for layer in shape.layers for lin in layer.linears if lin.lora_rank]
    assert adapted == [(1, "self_attn.q_proj", 8), (1, "mlp.down_proj", 8)]
    assert [layer.index for layer in shape.region()] == [1]  # backward stops below the adapted layer
    roles = [(lin.name, lin.role) for lin in shape.layers[0].linears]
    assert roles == [("self_attn.q_proj", "attn_in"), ("self_attn.k_proj", "attn_in"), ("self_attn.v_proj", "attn_in"),
                     ("self_attn.o_proj", "attn_out"), ("mlp.gate_proj", "mlp_in"), ("mlp.up_proj", "mlp_in"),
                     ("mlp.down_proj", "mlp_out")]


@pytest.mark.parametrize("overrides", [("method.type=qlora",), ("method.type=qlora", "method.double_quant=false"),
                                       ("method.type=qlora", "method.bits=8")], ids=["nf4-double", "nf4", "int8"])
def test_quantized_bytes_match_bitsandbytes(tiny_cfg, overrides):
    pytest.importorskip("bitsandbytes")
    cfg = tiny_cfg(*overrides)
    shape = describe(cfg, gpu=False)
    model = real_model(cfg)
    assert {(g.trainable, g.dtype): (g.numel, g.bytes) for g in shape.groups} == groups_of(model)
    assert {g.dtype for g in shape.groups if not g.trainable} == {"float32", "int8" if cfg.method.bits == 8 else "nf4"}


def test_a_gptq_base_is_planned_with_its_linears_quantized_and_adapted(tiny_cfg, tmp_path):
    from transformers import LlamaConfig

    from tests.planning.conftest import TINY

    config = LlamaConfig(**TINY)
    config.quantization_config = {"quant_method": "gptq", "bits": 4, "group_size": 32}
    config.save_pretrained(tmp_path)  # a GPTQ checkpoint's config.json: planning reads nothing else
    shape = describe(tiny_cfg(f"model.name_or_path={tmp_path}", "model.random_init=false", "model.config_overrides={}"),
                     gpu=False)
    qlora = describe(tiny_cfg("method.type=qlora"), gpu=False)  # the same weights, 4-bit, the same storage rule
    frozen = {g.dtype: (g.numel, g.bytes) for g in shape.groups if not g.trainable}
    assert frozen["gptq"] == {g.dtype: (g.numel, g.bytes) for g in qlora.groups if not g.trainable}["nf4"]
    assert frozen["gptq"][0] == 2 * (4 * 64 * 64 // 2 + 64 * 64 + 3 * 64 * 128)  # q,o 64x64; k,v 64x32; mlp 3x64x128
    adapted = {lin.name for layer in shape.layers for lin in layer.linears if lin.lora_rank}
    assert len(adapted) == 7 and all(lin.quantized for layer in shape.layers for lin in layer.linears)
