"""Config rules of hubs and naive model parallelism, checked before anything loads."""

from __future__ import annotations

import pytest

from ember.config.schema import ModelConfig
from ember.errors import ConfigError


@pytest.mark.parametrize("overrides, env, message", [
    (["output.push_to_hub=tiny"], {}, r"output.push_to_hub='tiny' is not a repository id: write ORG/NAME"),
    (["train.extra={hub_model_id: a/b}"], {}, r"train.extra.hub_model_id: the Trainer's own upload is not used"),
    (["model.random_init=false", "model.name_or_path=/x", "model.device_map=auto", "train.deepspeed=ds.json"], {},
     r"model.device_map=auto splits one model over the GPUs inside one process, which cannot be combined with "
     r"train.deepspeed: run a single process"),
    (["model.random_init=false", "model.name_or_path=/x", "model.device_map=auto"], {"WORLD_SIZE": "2"},
     r"cannot be combined with 2 processes \(torchrun / accelerate launch\)"),
    (["model.random_init=false", "model.name_or_path=/x", "model.device_map=auto"], {"ACCELERATE_USE_FSDP": "true"},
     r"cannot be combined with FSDP"),
    (["model.random_init=false", "model.name_or_path=/x", "model.device_map=everywhere"], {},
     r"model.device_map='everywhere': choose one of auto, balanced, balanced_low_0, sequential"),
    (["model.device_map=auto"], {}, r"model.device_map places loaded weights; a random_init model"),
    (["model.max_memory={0: 20GiB}"], {}, r"model.max_memory applies with model.device_map"),
])
def test_refused_before_loading(tiny_run_config, monkeypatch, tmp_path, overrides, env, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ds.json").write_text("{}")
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ConfigError, match=message):
        tiny_run_config(*overrides)


def test_device_map_and_max_memory_reach_from_pretrained():
    from ember.models.loading import _placement

    cfg = ModelConfig(device_map="auto", max_memory={0: "20GiB", "1": "20GiB", "cpu": "64GiB"})
    assert _placement(cfg, quantized=False) == {"device_map": "auto",
                                                "max_memory": {0: "20GiB", 1: "20GiB", "cpu": "64GiB"}}
    assert _placement(ModelConfig(device_map="sequential"), quantized=True) == {"device_map": "sequential"}
    assert _placement(ModelConfig(), quantized=False) == {}
    assert _placement(ModelConfig(), quantized=True) == {"device_map": {"": "cpu"}}  # no GPU here


def test_device_map_loads_a_model_on_cpu(tiny_llm_dir):
    """The one placement a CPU machine has: device_map auto puts every layer on the CPU (GPUs: bench/gpu_check.sh)."""
    from ember.models.loading import load_model

    import torch

    model = load_model(ModelConfig(name_or_path=tiny_llm_dir, dtype="float32", device_map="auto",
                                   max_memory={"cpu": "2GiB"}))
    plain = load_model(ModelConfig(name_or_path=tiny_llm_dir, dtype="float32"))
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), plain.state_dict().values(), strict=True))
