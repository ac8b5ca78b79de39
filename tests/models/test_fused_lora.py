"""Ember's LoRA layers compute what peft's compute (bit for bit in fp32), save adapters peft loads, and leave every
case they do not fuse to peft's own forward."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora.layer import Linear as PeftLoraLinear

from ember.config.schema import MethodConfig
from ember.models.adapters import apply_method
from ember.models.fused_lora import FusedLoraLinear
from ember.models.loading import load_model

IDS = torch.randint(0, 256, (2, 12), generator=torch.Generator().manual_seed(0))


def lora_pair(model_config, rank=4, alpha=8, dropout=0.0, **overrides):
    """(Ember's LoRA model, plain peft's) on the same tiny base, same non-zero adapter weights."""
    if overrides:
        model_config = copy.deepcopy(model_config)
        model_config.config_overrides.update(overrides)
    torch.manual_seed(0)
    base = load_model(model_config, vocab_size=256)
    with torch.no_grad():
        for module in base.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(std=0.1)
    reference_base = copy.deepcopy(base)
    ours = apply_method(base, MethodConfig(type="lora", rank=rank, alpha=alpha, dropout=dropout), None)
    reference = get_peft_model(reference_base, LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                                                          target_modules="all-linear", task_type="CAUSAL_LM"))
    with torch.no_grad():
        for name, p in ours.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.1, generator=torch.Generator().manual_seed(len(name)))
    reference.load_state_dict(ours.state_dict())
    return ours, reference


def run(model, seed=0):
    """Logits and every trainable parameter's gradient after one backward of the LM loss."""
    model.zero_grad()
    torch.manual_seed(seed)  # dropout draws the same masks in both models
    out = model(input_ids=IDS, labels=IDS)
    out.loss.backward()
    return out.logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def lora_layers(model):
    return [m for m in model.modules() if isinstance(m, PeftLoraLinear)]


@pytest.mark.parametrize("overrides", [{}, {"attention_bias": True, "mlp_bias": True}], ids=["no-bias", "bias"])
def test_fp32_logits_equal_peft_and_gradients_to_the_last_bits(tiny_model_config, overrides):
    ours, reference = lora_pair(tiny_model_config, **overrides)
    assert {type(m) for m in lora_layers(ours)} == {FusedLoraLinear}
    assert {type(m) for m in lora_layers(reference)} == {PeftLoraLinear}
    assert len(lora_layers(ours)) == 14  # the 7 projections of 2 layers
    logits, grads = run(ours.train())
    ref_logits, ref_grads = run(reference.train())
    assert torch.equal(logits, ref_logits)
    assert grads.keys() == ref_grads.keys() and len(grads) == 28
    exact = 0
    for name, grad in grads.items():
        assert grad.abs().sum() > 0, name
        # the adapter's input gradient is accumulated into the projection's by the matmul (peft adds the two
        # afterwards): a last-bit difference that reaches the lower layers' adapter gradients
        assert relative_error(grad, ref_grads[name]) < 1e-6, name
        exact += torch.equal(grad, ref_grads[name])
    assert exact >= 4  # the top layer's up/down/gate gradients see no accumulated input gradient yet


def test_any_scaling_matches_peft_to_rounding(tiny_model_config):
    ours, reference = lora_pair(tiny_model_config, rank=4, alpha=6)  # scaling 1.5: rounded in another order
    logits, grads = run(ours.train())
    ref_logits, ref_grads = run(reference.train())
    assert relative_error(logits, ref_logits) < 1e-6
    for name, grad in grads.items():
        assert relative_error(grad, ref_grads[name]) < 1e-6, name


def test_dropout_draws_peft_masks_and_is_off_in_eval(tiny_model_config):
    ours, reference = lora_pair(tiny_model_config, dropout=0.3)
    logits, grads = run(ours.train(), seed=3)
    ref_logits, ref_grads = run(reference.train(), seed=3)
    assert torch.equal(logits, ref_logits)
    for name, grad in grads.items():
        assert relative_error(grad, ref_grads[name]) < 1e-6, name
    eval_logits, _ = run(ours.eval(), seed=4)
    assert torch.equal(eval_logits, run(reference.eval(), seed=5)[0])  # no mask drawn in eval


def test_bf16_autocast_matches_peft_to_bf16_rounding(tiny_model_config):
    ours, reference = lora_pair(tiny_model_config)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, grads = run(ours.train())
        ref_logits, ref_grads = run(reference.train())
    assert logits.dtype == ref_logits.dtype == torch.bfloat16
    # peft rounds the adapter's product, its scaling and the sum to bf16; the fused layer rounds once
    assert relative_error(logits, ref_logits) < 1e-2
    for name, grad in grads.items():
        assert grad.dtype == torch.float32, name  # fp32 master adapters get fp32 gradients, as under peft
        assert relative_error(grad, ref_grads[name]) < 3e-2, name


def output_node(layer, x) -> str:
    return type(layer(x).grad_fn).__name__


def test_cases_it_does_not_fuse_run_peft_forward(tiny_model_config):
    ours, reference = lora_pair(tiny_model_config)
    layer = ours.base_model.model.model.layers[0].self_attn.o_proj
    x = torch.randn(3, 64, requires_grad=True)
    assert output_node(layer, x) == "_LoraMatmulBackward"

    hits = []  # a pre-hook on the base layer (DeepSpeed ZeRO-3 gathers its weight in one)
    handle = layer.base_layer.register_forward_pre_hook(lambda *_: hits.append(1))
    assert output_node(layer, x) != "_LoraMatmulBackward" and hits == [1]
    handle.remove()

    layer.base_layer.weight.requires_grad_(True)  # a trained base weight gets its gradient from peft's path
    layer(x).sum().backward()
    assert layer.base_layer.weight.grad is not None
    layer.base_layer.weight.requires_grad_(False)

    with ours.disable_adapter():
        assert torch.equal(layer(x), layer.base_layer(x))
    ours.merge_adapter()
    assert output_node(layer, x) != "_LoraMatmulBackward"
    reference.merge_adapter()
    with torch.no_grad():
        assert torch.equal(ours(input_ids=IDS).logits, reference(input_ids=IDS).logits)


def test_mixed_dtypes_outside_autocast_run_peft_forward(tiny_model_config):
    ours, _ = lora_pair(tiny_model_config)
    layer = ours.base_model.model.model.layers[1].mlp.down_proj
    layer.base_layer.to(torch.bfloat16)  # a bf16 base under fp32 adapters: peft casts the adapter's input
    x = torch.randn(3, 128, dtype=torch.bfloat16, requires_grad=True)
    assert output_node(layer, x) != "_LoraMatmulBackward"
    layer.base_layer.to(torch.float32)
    assert output_node(layer, x.detach().float().requires_grad_()) == "_LoraMatmulBackward"


def test_saved_adapter_loads_in_plain_peft(tiny_model_config, tmp_path):
    ours, _ = lora_pair(tiny_model_config)
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert not any("custom" in key for key in saved)
    torch.manual_seed(0)
    fresh = PeftModel.from_pretrained(load_model(tiny_model_config, vocab_size=256), tmp_path)
    assert {type(m) for m in lora_layers(fresh)} == {PeftLoraLinear}
    ours.eval()
    assert torch.equal(fresh(input_ids=IDS).logits, ours(input_ids=IDS).logits)


@pytest.mark.parametrize("method", [{"type": "lora", "fused": False}, {"type": "lora", "dora": True}, {"type": "full"}],
                         ids=["fused-false", "dora", "full"])
def test_unfused_dora_and_other_methods_keep_peft_layers(tiny_model_config, method):
    model = apply_method(load_model(tiny_model_config, vocab_size=256), MethodConfig(rank=4, **method), None)
    assert not any(isinstance(m, FusedLoraLinear) for m in model.modules())
