"""What a finished run leaves behind, and what it tells the person watching it."""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
import yaml

from ember.config import dump_yaml, load_config
from ember.core.artifacts import RUN_CONFIG, TEMPLATE_INFO
from ember.errors import ConfigError
from ember.training.run import train

from .helpers import logged_losses, saved_tensors


def test_lora_run_leaves_a_servable_directory(tiny_run_config, capsys):
    cfg = tiny_run_config("train.report_to=tensorboard", "train.save_strategy=steps", "train.save_steps=2",
                          "train.max_steps=2", "data.eval_split=0.25", "train.eval_strategy=steps",
                          "train.eval_steps=1")
    result = train(cfg)
    out = result.output_dir
    printed = capsys.readouterr().out

    # Printed at start: the resolved config (loadable as is), and trainable / total parameters.
    resolved = re.split(r"\ndata: \d", printed.split("resolved config:\n", 1)[1])[0]
    assert yaml.safe_load(resolved) == yaml.safe_load(dump_yaml(cfg))
    # rank 4 × (in + out) over q, k, v, o (hidden 64, 2 KV heads of 16) and gate, up, down (64 ↔ 128), 2 layers
    lora = 4 * ((64 + 64) * 2 + (64 + 32) * 2 + (64 + 128) * 3) * 2
    assert result.trainable_params == lora == 8192
    assert "trainable params: 8.2K (8,192) || all params:" in printed
    assert f"({result.total_params:,})" in printed

    # The adapter, and nothing but the adapter, was saved; peft loads it onto a fresh copy of the base model.
    from peft import PeftModel
    from transformers import AutoTokenizer

    from ember.models.loading import load_model

    adapter = saved_tensors(out)
    assert adapter and all("lora_" in name for name in adapter)
    assert result.trainable_params == sum(t.numel() for t in adapter.values())
    tokenizer = AutoTokenizer.from_pretrained(out)
    base = load_model(cfg.model, vocab_size=len(tokenizer))
    tuned = PeftModel.from_pretrained(base, out)
    loaded = {n: p for n, p in tuned.named_parameters() if "lora_" in n}
    assert len(loaded) == len(adapter)
    for name, tensor in adapter.items():
        match = [p for n, p in loaded.items() if n.replace(".default", "") == name]
        assert len(match) == 1 and torch.equal(match[0].detach(), tensor), name
    assert any(t.abs().sum() > 0 for n, t in adapter.items() if "lora_B" in n)  # B starts at zero: it trained

    # Tokenizer with its chat template, resolved config, template identity.
    from ember.models.loading import load_tokenizer

    assert tokenizer.chat_template == load_tokenizer(cfg.model).chat_template
    assert load_config(out / RUN_CONFIG) == cfg
    template = json.loads((out / TEMPLATE_INFO).read_text())
    assert template["name"] == "auto"

    # Trainer state, TensorBoard events, loss curve, metrics, and the same metadata inside the checkpoint.
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and len(logged_losses(out)) == 2
    assert any("eval_loss" in h for h in state["log_history"])
    assert list(out.rglob("events.out.tfevents.*"))
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_loss"] > 0 and "eval_loss" in metrics
    checkpoint = out / "checkpoint-2"
    for name in ("adapter_model.safetensors", RUN_CONFIG, TEMPLATE_INFO, "trainer_state.json", "tokenizer.json"):
        assert (checkpoint / name).is_file(), name


def test_full_finetune_saves_loadable_weights_and_no_plot_when_off(tiny_run_config):
    from transformers import AutoModelForCausalLM

    result = train(tiny_run_config("method.type=full", "train.max_steps=1", "output.plot_loss=false"))
    assert not (result.output_dir / "loss.png").exists()
    model = AutoModelForCausalLM.from_pretrained(result.output_dir)
    weights = saved_tensors(result.output_dir)
    assert result.trainable_params == result.total_params == sum(p.numel() for p in model.parameters())
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), weights[name]), name


def test_a_directory_holds_one_run_a_second_needs_overwrite_and_replaces_it_whole(tiny_run_config, capsys):
    """A fresh run into a finished one fails before writing anything; with output.overwrite=true it first removes the
    earlier run's checkpoints, weights and records, so a run that then fails leaves no mix of the two."""
    first = train(tiny_run_config("train.save_strategy=steps", "train.save_steps=1")).output_dir
    written = sorted(p.name for p in first.iterdir())
    assert {"adapter_model.safetensors", "metrics.json", "checkpoint-2", RUN_CONFIG, TEMPLATE_INFO} <= set(written)
    (first / "notes.txt").write_text("mine", encoding="utf-8")
    run_config = (first / RUN_CONFIG).read_text(encoding="utf-8")
    with pytest.raises(ConfigError) as refused:
        train(tiny_run_config("train.learning_rate=2e-3"))
    assert str(refused.value) == (f"{first} already holds checkpoints: continue with "
                                  "train.resume_from_checkpoint=auto, or start over with output.overwrite=true (or "
                                  "another output.dir)")
    for path in first.glob("checkpoint-*"):
        shutil.rmtree(path)
    with pytest.raises(ConfigError) as refused:
        train(tiny_run_config("train.learning_rate=2e-3"))
    assert str(refused.value) == (f"{first} holds a finished run (adapter_config.json, adapter_model.safetensors, "
                                  "metrics.json): train into another output.dir, or replace that run with "
                                  "output.overwrite=true")
    assert (first / RUN_CONFIG).read_text(encoding="utf-8") == run_config  # nothing was written
    capsys.readouterr()

    # the replacing run fails after its first write (no training samples): none of the first run's files are left
    with pytest.raises(ConfigError, match="no training samples"):
        train(tiny_run_config("output.overwrite=true", "data.eval_split=0.99"))
    assert "output.overwrite: removed the earlier run's " in capsys.readouterr().out
    left = sorted(p.name for p in first.iterdir())
    assert not {"adapter_model.safetensors", "adapter_config.json", "metrics.json", TEMPLATE_INFO,
                "trainer_state.json", "loss.png"} & set(left)
    assert {RUN_CONFIG, "data_report.json", "notes.txt"} <= set(left)  # the new run's records; files no run writes
    assert "eval_split: 0.99" in (first / RUN_CONFIG).read_text(encoding="utf-8")
