"""Tuning an image-text model: LoRA goes into the language model only, the vision tower stays frozen unless
`method.train_vision`, the projector trains only with `method.train_projector`; `ember train` runs it end to end."""

from __future__ import annotations

import json

import pytest
import torch

from ember.config.schema import MethodConfig


@pytest.fixture
def llava(tiny_llava):
    from transformers import AutoModelForImageTextToText

    return AutoModelForImageTextToText.from_pretrained(tiny_llava, dtype=torch.float32)


def _apply(model, **method):
    from ember.models.adapters import apply_method
    from ember.models.registry import families

    return apply_method(model, MethodConfig(**{"rank": 4, "alpha": 8, **method}), families()["llava"])


def _trainable(model) -> set[str]:
    return {name for name, p in model.named_parameters() if p.requires_grad}


def _parts(names) -> set[str]:
    from ember.models.registry import families
    from ember.models.vision import part_of

    return {part_of(n, families()["llava"].vision) for n in names}


def test_lora_adapts_the_language_model_only_by_default(llava):
    model = _apply(llava, type="lora", targets="family")
    trainable = _trainable(model)
    assert trainable and _parts(trainable) == {"language"}
    assert all(".lora_" in n for n in trainable)
    adapted = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trainable}
    assert adapted == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}


def test_train_vision_adds_lora_to_the_tower_and_train_projector_trains_it_whole(llava):
    model = _apply(llava, type="lora", train_vision=True, train_projector=True)
    trainable = _trainable(model)
    assert _parts(trainable) == {"language", "tower", "projector"}
    assert all(".lora_" in n for n in trainable if _parts([n]) == {"tower"})
    projector = {n for n in trainable if _parts([n]) == {"projector"}}
    assert projector and all("modules_to_save" in n for n in projector)


def test_lora_layers_counts_the_language_models_layers(llava):
    model = _apply(llava, type="lora", lora_layers=1)
    layers = {n.split(".layers.")[1].split(".")[0] for n in _trainable(model)}
    assert layers == {"1"}  # the last of the language model's 2 layers, not of the vision tower's


def test_full_keeps_tower_and_projector_frozen_unless_asked(llava):
    model = _apply(llava, type="full")  # the lm_head is tied to the language model's embeddings
    assert _parts(_trainable(model)) == {"language"}
    model = _apply(model, type="full", train_vision=True, train_projector=True)
    assert _parts(_trainable(model)) == {"language", "tower", "projector"}


def test_freeze_counts_language_layers(llava):
    model = _apply(llava, type="freeze", trainable_layers=1, train_projector=True)
    names = _trainable(model)
    assert _parts(names) == {"language", "projector"}
    assert {n.split(".layers.")[1].split(".")[0] for n in names if ".layers." in n} == {"1"}


def test_vision_options_on_a_text_model_are_an_error(tiny_model_config):
    from ember.errors import ConfigError
    from ember.models.adapters import apply_method
    from ember.models.loading import load_model

    model = load_model(tiny_model_config)
    with pytest.raises(ConfigError, match="train_vision"):
        apply_method(model, MethodConfig(train_vision=True), None)


@pytest.mark.slow
def test_train_moves_lora_and_projector_and_never_the_tower(vision_config, tiny_llava):
    from safetensors.torch import load_file

    from ember.cli import main
    from ember.config import dump_yaml

    cfg = vision_config("method.train_projector=true", "train.max_steps=3")
    path = cfg.output.dir + ".yaml"
    with open(path, "w", encoding="utf-8") as f:
        f.write(dump_yaml(cfg))
    assert main(["train", path]) == 0

    out = cfg.output.dir
    adapter = load_file(f"{out}/adapter_model.safetensors")
    base = load_file(f"{tiny_llava}/model.safetensors")
    projector = {k: v for k, v in adapter.items() if "multi_modal_projector" in k}
    assert projector, sorted(adapter)[:5]
    saved = {k.split("multi_modal_projector.")[1]: v for k, v in base.items() if "multi_modal_projector." in k}
    assert len(saved) == len(projector) == 4  # two Linear layers, weight and bias
    for key, value in projector.items():  # trained whole: every projector tensor moved from the base
        assert not torch.equal(value, saved[key.split("multi_modal_projector.")[1]]), key
    assert not any("vision_tower" in k for k in adapter)  # frozen tower: nothing of it is saved
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero; it moved
    metrics = json.loads(open(f"{out}/metrics.json", encoding="utf-8").read())
    assert 0 < metrics["train_loss"] < 20
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(out)  # the run saves the processor beside the adapter
    assert type(processor).__name__ == "LlavaProcessor" and processor.image_token == "<image>"
    report = json.loads(open(f"{out}/data_report.json", encoding="utf-8").read())
    assert report["train_samples"] == 8
