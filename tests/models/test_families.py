"""Every family transformers implements natively: a tiny random model of it trains 2 LoRA steps via `ember train`."""

from __future__ import annotations

import json

import pytest
import yaml

from ember.config import to_dict
from ember.models.registry import families

ATTENTION = {"num_hidden_layers": 2, "hidden_size": 64, "num_attention_heads": 4}
DECODER = {**ATTENTION, "intermediate_size": 128, "num_key_value_heads": 2}
# Only what differs from each family's defaults to make it tiny; qwen3 and glm4 fix head_dim at 128 by default.
TINY = {
    "llama": DECODER,
    "qwen2": DECODER,
    "qwen3": {**DECODER, "head_dim": 16},
    "mistral": DECODER,
    "glm4": {**DECODER, "head_dim": 16},
    "falcon": ATTENTION,
    "bloom": ATTENTION,
    "gpt_neox": {**ATTENTION, "intermediate_size": 128},
}
# Image-text families need a processor as well: tests/vision builds tiny ones of those.
NATIVE = sorted(name for name, family in families().items() if family.native and family.vision is None)


def test_every_native_family_has_a_tiny_config():
    assert NATIVE == sorted(TINY)


@pytest.mark.parametrize("name", NATIVE)
def test_family_trains_two_lora_steps_through_the_cli(name, tiny_run_config, tmp_path):
    from ember.cli import main

    family = families()[name]
    cfg = tiny_run_config()
    raw = to_dict(cfg)
    raw["model"].update(name_or_path=name, config_overrides=TINY[name])
    raw["method"]["targets"] = "family"  # the registry's lora_targets, not all-linear
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(raw, allow_unicode=True), encoding="utf-8")

    assert main(["train", str(path), "train.max_steps=2"]) == 0

    out = tmp_path / "run"
    assert json.loads((out / "adapter_config.json").read_text())["peft_type"] == "LORA"
    from safetensors.torch import load_file

    keys = list(load_file(out / "adapter_model.safetensors"))
    for target in family.lora_targets:  # every registry target exists in the real architecture
        assert any(f".{target}.lora_A." in k for k in keys), (name, target)
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0 < metrics["train_loss"] < 20
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    assert yaml.safe_load((out / "ember_run.yaml").read_text())["model"]["name_or_path"] == name
