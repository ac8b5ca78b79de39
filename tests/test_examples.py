"""Every file in examples/ loads: run configs through Ember's own loader and validation, launcher configs through
accelerate's parser, DeepSpeed JSON as the keys the Trainer fills in. Data and JSON paths they name exist."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
LAUNCHERS = {EXAMPLES / "accelerate", EXAMPLES / "deepspeed"}
RUN_CONFIGS = sorted(p for p in EXAMPLES.rglob("*.yaml") if p.parent not in LAUNCHERS and "data" not in p.parts)
ACCELERATE = sorted((EXAMPLES / "accelerate").glob("*.yaml"))
DEEPSPEED = sorted((EXAMPLES / "deepspeed").glob("*.json"))


def test_the_issue_examples_are_all_here():
    names = {p.relative_to(EXAMPLES).as_posix() for p in EXAMPLES.rglob("*") if p.is_file()}
    expected = {"quickstart.yaml", "firefly-qlora-sft.yaml", "firefly-llama2-pt.yaml", "chatglm-promptcblue-lora.yaml",
                "qwen2.5-7b-qlora-sft.yaml", "qwen2.5-lora-sft.yaml", "qwen2.5-full-sft.yaml",
                "accelerate/zero2.yaml", "accelerate/zero3.yaml", "accelerate/fsdp.yaml", "accelerate/ddp.yaml",
                "accelerate/zero2_offload.yaml", "accelerate/zero3_offload.yaml",
                "deepspeed/zero2.json", "deepspeed/zero3.json", "deepspeed/zero2_offload.json",
                "deepspeed/zero3_offload.json", "vocab-extend-pt.yaml"}
    assert expected <= names, expected - names


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: p.relative_to(EXAMPLES).as_posix())
def test_run_config_loads_and_validates(path, monkeypatch):
    from ember.config import load_config, validate

    monkeypatch.chdir(ROOT)  # paths in examples are relative to the repository root, where users run them
    cfg = load_config(path)
    for spec in cfg.data.datasets:
        assert (ROOT / spec.path).is_file(), f"{path.name}: {spec.path} does not exist"
    if cfg.train.deepspeed:
        assert (ROOT / cfg.train.deepspeed).is_file()
    # Hardware-specific examples validate only where their optional package is installed.
    needs = {"bitsandbytes": cfg.method.type == "qlora", "deepspeed": bool(cfg.train.deepspeed)}
    missing = [name for name, needed in needs.items() if needed and importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"{path.name} needs {', '.join(missing)} (it loads; validation needs the package)")
    validate(cfg)


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.name)
def test_accelerate_config_is_accepted_by_accelerate(path):
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    config = ClusterConfig.from_yaml_file(str(path))  # rejects unknown top-level keys
    launch_options = {s.lstrip("-") for action in launch_command_parser()._actions for s in action.option_strings}
    inner = config.deepspeed_config or config.fsdp_config or {}
    assert not [k for k in inner if k not in launch_options]  # each becomes an `accelerate launch --KEY`
    assert bool(inner) == (config.distributed_type in ("DEEPSPEED", "FSDP"))
    if config.deepspeed_config:
        assert (ROOT / config.deepspeed_config["deepspeed_config_file"]).is_file()
        assert config.mixed_precision in (None, "no")  # precision comes from the JSON ("auto" ← train:)


@pytest.mark.parametrize("path", DEEPSPEED, ids=lambda p: p.name)
def test_deepspeed_json_leaves_the_batch_to_the_trainer(path):
    config = json.loads(path.read_text())
    stage = config["zero_optimization"]["stage"]
    assert stage == int(path.stem.split("_")[0][-1])  # zero2.json, zero2_offload.json → stage 2
    offload = config["zero_optimization"].get("offload_optimizer", {}).get("device", "none")
    assert offload == ("cpu" if path.stem.endswith("_offload") else "none")
    for key in ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                "gradient_clipping"):
        assert config[key] == "auto", key  # filled from train: so the two can never disagree
    assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"
    assert "optimizer" not in config and "scheduler" not in config  # train.optim / lr_scheduler_type apply


def test_yaml_examples_are_plain_yaml():
    for path in EXAMPLES.rglob("*.yaml"):
        assert isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict), path
