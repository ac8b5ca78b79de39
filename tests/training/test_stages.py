"""The shipped example configs run end to end when only the model is swapped for a tiny random one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import TrainerCallback

from ember.config import load_config
from ember.training.run import train

ROOT = Path(__file__).resolve().parents[2]
TINY = "{num_hidden_layers: 2, hidden_size: 64, intermediate_size: 128, num_attention_heads: 4, num_key_value_heads: 2}"


def tiny(example: str, output: Path, *overrides: str):
    return load_config(ROOT / "examples" / example, [
        "model.name_or_path=llama", "model.random_init=true", f"model.config_overrides={TINY}",
        "model.dtype=float32", "model.trust_remote_code=null", "data.max_length=64", "data.cache=false",
        "train.max_steps=2", "train.per_device_train_batch_size=2", "train.gradient_accumulation_steps=1",
        "train.bf16=false", "train.report_to=none", "train.save_strategy=no", "train.eval_strategy=no",
        f"output.dir={output}", *overrides,
    ])


class LearningRates(TrainerCallback):
    def __init__(self):
        self.groups: list[tuple[float, int]] = []

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        self.groups = [(g["initial_lr"], sum(p.numel() for p in g["params"])) for g in optimizer.param_groups]


def test_continued_pretraining_trains_embeddings_at_their_own_rate(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = tiny("firefly-llama2-pt.yaml", tmp_path / "pt")
    assert cfg.stage == "pt" and cfg.train.gradient_checkpointing  # the example's own settings are kept
    rates = LearningRates()
    result = train(cfg, callbacks=[rates])

    vocab, hidden = 49152, 64  # SmolLM2 tokenizer rows × hidden, for embed_tokens and for the untied lm_head
    assert sorted(rates.groups) == sorted([(2.0e-4, result.trainable_params - 2 * vocab * hidden),
                                           (2.0e-5, 2 * vocab * hidden)])
    from safetensors.torch import load_file

    saved = load_file(result.output_dir / "adapter_model.safetensors")
    assert {k for k in saved if "lora_" not in k} == {"base_model.model.model.embed_tokens.weight",
                                                      "base_model.model.lm_head.weight"}
    assert json.loads((result.output_dir / "data_report.json").read_text())["train_samples"] > 0
    assert "ember_template.json" not in {p.name for p in result.output_dir.iterdir()}  # raw text: no template


@pytest.mark.parametrize("example", ["chatglm-promptcblue-lora.yaml", "firefly-qlora-sft.yaml"])
def test_sft_examples_train_on_a_tiny_model(example, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    overrides = ("method.targets=all-linear",) if "chatglm" in example else ("method.compute_dtype=float32",)
    cfg = tiny(example, tmp_path / "sft", *overrides)
    result = train(cfg)
    assert result.metrics["train_loss"] > 0
    template = json.loads((result.output_dir / "ember_template.json").read_text())
    assert template["name"] == ("chatglm3" if "chatglm" in example else "auto")
