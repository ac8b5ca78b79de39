"""`method.targets: family` puts LoRA on exactly the family's `lora_targets` from families.yaml."""

from __future__ import annotations

import dataclasses

import pytest

from ember.config.schema import MethodConfig
from ember.errors import ConfigError
from ember.models.adapters import apply_method
from ember.models.loading import load_model
from ember.models.registry import families


@pytest.fixture
def tiny_model(tiny_model_config):
    return load_model(tiny_model_config, vocab_size=256)


def adapted(model) -> set[str]:
    """Names of the modules carrying LoRA (`...layers.0.self_attn.q_proj.lora_A` → q_proj)."""
    return {n.split(".")[-2] for n, _ in model.named_modules() if n.endswith(".lora_A")}


def test_family_targets_are_the_registry_list(tiny_model):
    llama = families()["llama"]
    model = apply_method(tiny_model, MethodConfig(type="lora", rank=4, targets="family"), llama)
    assert set(model.peft_config["default"].target_modules) == set(llama.lora_targets)
    assert adapted(model) == set(llama.lora_targets)
    assert sum(1 for n, _ in model.named_modules() if n.endswith(".lora_A")) == 2 * len(llama.lora_targets)


def test_a_family_with_other_targets_changes_what_is_adapted(tiny_model):
    """The list comes from the registry entry, not from the architecture: a family listing only q and v adapts those."""
    narrow = dataclasses.replace(families()["llama"], lora_targets=("q_proj", "v_proj"))
    model = apply_method(tiny_model, MethodConfig(type="lora", rank=4, targets="family", lora_layers=1), narrow)
    assert adapted(model) == {"q_proj", "v_proj"}
    assert all(".layers.1." in n for n, _ in model.named_modules() if n.endswith(".lora_A"))


def test_family_targets_need_a_known_family(tiny_model):
    with pytest.raises(ConfigError, match="targets: family needs a model family .*model.family"):
        apply_method(tiny_model, MethodConfig(type="lora", targets="family"), None)


def test_validation_names_the_choices(tiny_run_config):
    assert tiny_run_config("method.targets=family").method.targets == "family"
    with pytest.raises(ConfigError, match="'all-linear', 'family' .* got 'famly'"):
        tiny_run_config("method.targets=famly")
