"""Each tuning method trains exactly the parameters it promises, and LoRA options reach peft."""

from __future__ import annotations

import math

import pytest
import torch

from ember.config.schema import MethodConfig
from ember.errors import ConfigError
from ember.models.adapters import apply_method, embedding_parameters, parameter_counts
from ember.models.loading import load_model


@pytest.fixture
def tiny_model(tiny_model_config):
    return load_model(tiny_model_config, vocab_size=256)


def changed_after_training(model, steps: int = 2) -> set[str]:
    """Names of the parameters that two plain SGD steps change (two, so LoRA A moves once B is non-zero)."""
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.5)
    ids = torch.randint(0, 256, (2, 10), generator=torch.Generator().manual_seed(0))
    model.train()
    for _ in range(steps):
        optimizer.zero_grad()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
    return {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}


def test_lora_trains_only_the_adapter(tiny_model):
    model = apply_method(tiny_model, MethodConfig(type="lora", rank=4, dropout=0.0), None)
    names = {n for n, _ in model.named_parameters()}
    lora = {n for n in names if "lora_" in n}
    assert len(lora) == 2 * 7 * 2  # A and B on the 7 projections of 2 layers ("all-linear" leaves lm_head out)
    assert {n for n, p in model.named_parameters() if p.requires_grad} == lora
    assert changed_after_training(model) == lora


def test_full_trains_everything(tiny_model):
    model = apply_method(tiny_model, MethodConfig(type="full"), None)
    names = {n for n, _ in model.named_parameters()}
    assert changed_after_training(model) == names
    trainable, total = parameter_counts(model)
    assert trainable == total


def test_freeze_trains_only_the_last_layers(tiny_model):
    model = apply_method(tiny_model, MethodConfig(type="freeze", trainable_layers=1), None)
    changed = changed_after_training(model)
    assert changed and all(n.startswith("model.layers.1.") for n in changed)
    assert changed == {n for n, p in model.named_parameters() if n.startswith("model.layers.1.")}


def test_freeze_trains_named_modules(tiny_model):
    model = apply_method(tiny_model, MethodConfig(type="freeze", trainable_modules=["down_proj", "model.norm"]), None)
    assert changed_after_training(model) == {
        "model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight", "model.norm.weight"}


def test_freeze_with_unknown_module_names_fails(tiny_model):
    with pytest.raises(ConfigError, match=r"trainable_modules=\['dwon_proj'\] matched no parameter"):
        apply_method(tiny_model, MethodConfig(type="freeze", trainable_modules=["dwon_proj"]), None)


def test_modules_to_save_trains_embeddings_and_head(tiny_model):
    method = MethodConfig(type="lora", rank=4, dropout=0.0, modules_to_save=["embed_tokens", "lm_head"])
    model = apply_method(tiny_model, method, None)
    changed = changed_after_training(model)
    copies = {n for n in changed if "modules_to_save" in n}
    assert {n.split(".modules_to_save")[0].rsplit(".", 1)[-1] for n in copies} == {"embed_tokens", "lm_head"}
    assert changed == copies | {n for n, _ in model.named_parameters() if "lora_" in n}
    # The originals stay frozen (peft keeps them to disable the adapter); the copies get their own learning rate.
    assert {id(p) for p in embedding_parameters(model)} == {id(p) for n, p in model.named_parameters() if n in copies}


def test_rslora_and_dora_reach_peft(tiny_model_config):
    method = MethodConfig(type="lora", rank=4, alpha=8, rslora=True, dora=True, targets=["q_proj", "v_proj"])
    model = apply_method(load_model(tiny_model_config, vocab_size=256), method, None)
    config = model.peft_config["default"]
    assert config.use_rslora and config.use_dora and config.r == 4 and config.lora_alpha == 8
    assert set(config.target_modules) == {"q_proj", "v_proj"}
    q_proj = model.base_model.model.model.layers[0].self_attn.q_proj
    assert q_proj.scaling["default"] == pytest.approx(8 / math.sqrt(4))  # rsLoRA: alpha / sqrt(r), not alpha / r
    magnitudes = [n for n, p in model.named_parameters() if "lora_magnitude_vector" in n and p.requires_grad]
    assert len(magnitudes) == 2 * 2  # DoRA: one magnitude vector per adapted module
    assert "lora_magnitude_vector" in " ".join(changed_after_training(model))


def test_plain_lora_scaling_is_alpha_over_rank(tiny_model):
    model = apply_method(tiny_model, MethodConfig(type="lora", rank=4, alpha=8, targets=["q_proj"]), None)
    assert model.base_model.model.model.layers[0].self_attn.q_proj.scaling["default"] == pytest.approx(2.0)
    assert not any("lora_magnitude_vector" in n for n, _ in model.named_parameters())


def test_unknown_lora_target_fails_with_a_hint(tiny_model):
    with pytest.raises(ConfigError, match="check method.targets"):
        apply_method(tiny_model, MethodConfig(type="lora", targets=["query_key_value"]), None)


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "down_proj"]])
def test_lora_layers_adapts_only_the_last_layers_and_autograd_stops_there(tiny_model, targets):
    model = apply_method(tiny_model, MethodConfig(type="lora", rank=4, dropout=0.0, targets=targets, lora_layers=1),
                         None)
    lora = {n for n, _ in model.named_parameters() if "lora_" in n}
    per_layer = 7 if targets == "all-linear" else 2
    assert len(lora) == 2 * per_layer and all(".layers.1." in n for n in lora)
    assert changed_after_training(model) == lora

    reached = []  # no gradient flows into layer 0: nothing there, nor below it, is trained
    layer0 = model.get_base_model().model.layers[0]
    layer0.register_full_backward_hook(lambda *args: reached.append(0))
    model.get_base_model().model.layers[1].register_full_backward_hook(lambda *args: reached.append(1))
    ids = torch.randint(0, 256, (1, 6))
    model(input_ids=ids, labels=ids).loss.backward()
    assert reached == [1]


def test_lora_layers_beyond_the_depth_adapts_every_layer(tiny_model, tiny_model_config):
    deep = apply_method(tiny_model, MethodConfig(type="lora", rank=4, lora_layers=9), None)
    assert len([n for n, _ in deep.named_parameters() if "lora_" in n]) == 2 * 7 * 2
    with pytest.raises(ConfigError, match="matched no module in the last 1 decoder layers"):
        apply_method(load_model(tiny_model_config, vocab_size=256),
                     MethodConfig(type="lora", targets=["no_such_proj"], lora_layers=1), None)
