"""Config mistakes fail at once, with the offending value and the fix, before any tokenizer or weight is loaded."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from ember.config import load_config
from ember.errors import ConfigError
from ember.training.run import train

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.fixture
def nothing_loads(monkeypatch):
    """Any attempt to read data, a tokenizer or weights fails the test."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a config error must be raised before data or weights are loaded")

    monkeypatch.setattr("ember.models.loading.load_model", forbidden)
    monkeypatch.setattr("ember.models.loading.load_tokenizer", forbidden)
    monkeypatch.setattr("ember.training.prepare.prepare_data", forbidden)


def test_unknown_keys_name_the_closest_valid_one(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("methd: {type: lora}\n")
    with pytest.raises(ConfigError, match="unknown key 'methd'; did you mean 'method'"):
        load_config(path)
    path.write_text("train: {learnig_rate: 1e-4}\n")
    with pytest.raises(ConfigError, match=r"cfg.yaml.train: unknown key 'learnig_rate'; did you mean 'learning_rate'"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown key 'rnak'; did you mean 'rank'"):
        load_config(None, ["method.rnak=8"])
    # the file is valid: a mistake on the command line is not reported as the file's
    path.write_text("train: {learning_rate: 1e-4}\n")
    with pytest.raises(ConfigError) as failed:
        load_config(path, ["train.learnig_rate=1e-3"])
    assert str(failed.value) == ("train: unknown key 'learnig_rate'; did you mean 'learning_rate'? (in the "
                                 f"command-line overrides, not {path})")
    with pytest.raises(ConfigError) as failed:
        load_config(path, ["train.max_steps=abc"])
    assert str(failed.value) == f"train.max_steps: expected an integer, got 'abc' (in the command-line overrides, not {path})"
    with pytest.raises(ConfigError, match=rf"^{tmp_path} is a folder: give the run's config YAML file"):
        load_config(tmp_path)
    path.write_text("train: {learnig_rate: 1e-4}\n")  # the file's own mistake stays the file's
    with pytest.raises(ConfigError, match=r"cfg.yaml.train: unknown key 'learnig_rate'; did you mean 'learning_rate'\?$"):
        load_config(path, ["train.max_steps=3"])
    with pytest.raises(ConfigError, match="'qlra' is not one of lora, qlora, full, freeze \\(did you mean 'qlora'"):
        load_config(None, ["method.type=qlra"])


def test_yaml_booleans_read_as_the_strategy_names_they_spell():
    cfg = load_config(None, ["train.save_strategy=no", "train.eval_strategy=no"])
    assert cfg.train.save_strategy == "no" and cfg.train.eval_strategy == "no"


@pytest.mark.parametrize("overrides, message", [
    (["method.type=full", "method.bits=4"], r"method.bits=4 quantizes the base model.*set method.type=qlora"),
    (["method.type=freeze", "method.quant_type=nf4"], "method.quant_type=nf4 quantizes the base model"),
    (["method.type=lora", "method.compute_dtype=bfloat16"], "method.compute_dtype=bfloat16 quantizes"),
    (["method.type=full", "method.dora=true"], "apply to LoRA, not method.type=full"),
    (["train.eval_strategy=steps"], "train.eval_strategy=steps but there is no validation data: set data.eval_split"),
    (["train.bf16=true", "train.fp16=true"], "both true: choose one"),
    (["train.warmup_ratio=0.1", "train.warmup_steps=5"], "both set: choose one"),
    (["train.extra={lerning_rate_decay: 1}"], "train.extra.lerning_rate_decay is not a TrainingArguments field"),
    (["train.extra={warmup_stesp: 1}"], "did you mean 'warmup_steps'"),
    (["method.type=freeze", "method.trainable_layers=-1"], "trainable_layers must be >= 0"),
    (["method.type=full", "method.lora_layers=4"], "method.lora_layers apply to LoRA, not method.type=full"),
    (["method.lora_layers=0"], r"method.lora_layers=0 must be >= 1"),
])
def test_invalid_combinations_fail_before_loading(tiny_run_config, nothing_loads, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(_config(tiny_run_config, overrides))


def _config(tiny_run_config, overrides):
    """The base tiny config with `overrides`; validation itself runs inside `train`."""
    from ember.config import apply_override, from_dict, to_dict
    from ember.config.schema import EmberConfig

    raw = to_dict(tiny_run_config())
    for item in overrides:
        apply_override(raw, item)
    return from_dict(EmberConfig, raw, "test")


@pytest.mark.parametrize("overrides, cause", [
    (["data.eval_split=0.99"], "(data.eval_split=0.99)"),
    (["data.datasets=[{path: PATH, split: eval}]"], "(split: eval for PATH)"),
])
def test_no_training_samples_fails_after_the_data_report_before_the_model(tiny_run_config, monkeypatch, overrides,
                                                                          cause):
    def forbidden(*args, **kwargs):
        raise AssertionError("the model must not load without training samples")

    monkeypatch.setattr("ember.models.loading.load_model", forbidden)
    path = tiny_run_config().data.datasets[0].path
    cfg = tiny_run_config(*(item.replace("PATH", path) for item in overrides))
    with pytest.raises(ConfigError) as failed:
        train(cfg)
    assert str(failed.value) == (f"no training samples: the data gave 8 evaluation samples and none to train on "
                                 f"{cause.replace('PATH', path)}; lower data.eval_split or add a dataset with "
                                 "split: train")
    assert (Path(cfg.output.dir) / "data_report.json").is_file()  # what the data gave is kept


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is valid with a CUDA GPU")
def test_fp16_on_cpu_fails_with_the_fix(tiny_run_config, nothing_loads):
    with pytest.raises(ConfigError, match="train.fp16=true needs a CUDA GPU; on CPU use train.bf16=true"):
        train(_config(tiny_run_config, ["train.fp16=true"]))


def hide_module(monkeypatch, name: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda module, *a: None if module == name else real(module, *a))


def test_qlora_without_bitsandbytes_fails_with_the_install_command(tiny_run_config, nothing_loads, monkeypatch):
    hide_module(monkeypatch, "bitsandbytes")
    with pytest.raises(ConfigError, match=r"needs bitsandbytes: pip install 'ember\[qlora\]'"):
        train(_config(tiny_run_config, ["method.type=qlora"]))


def test_deepspeed_config_must_exist_and_deepspeed_be_installed(tiny_run_config, nothing_loads, monkeypatch, tmp_path):
    with pytest.raises(ConfigError, match="train.deepspeed: .*missing.json is not a file"):
        train(_config(tiny_run_config, [f"train.deepspeed={tmp_path / 'missing.json'}"]))
    (tmp_path / "bad.json").write_text("{stage: 2}")
    with pytest.raises(ConfigError, match="bad.json is not valid JSON"):
        train(_config(tiny_run_config, [f"train.deepspeed={tmp_path / 'bad.json'}"]))
    hide_module(monkeypatch, "deepspeed")
    with pytest.raises(ConfigError, match="needs DeepSpeed: pip install deepspeed"):
        train(_config(tiny_run_config, [f"train.deepspeed={EXAMPLES / 'deepspeed' / 'zero2.json'}"]))


def test_existing_checkpoints_need_resume_or_overwrite(tiny_run_config, nothing_loads, tmp_path):
    (tmp_path / "run" / "checkpoint-2").mkdir(parents=True)
    with pytest.raises(ConfigError, match="already holds checkpoints: continue with train.resume_from_checkpoint=auto"):
        train(tiny_run_config())
    with pytest.raises(AssertionError, match="before data or weights"):  # overwrite=true passes the check
        train(tiny_run_config("output.overwrite=true"))


def test_the_cli_prints_one_line_and_exits_2(tmp_path, capsys):
    from ember.cli import main

    path = tmp_path / "cfg.yaml"
    path.write_text("train: {learnig_rate: 1e-4}\n")
    assert main(["train", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "did you mean 'learning_rate'" in err and "Traceback" not in err
