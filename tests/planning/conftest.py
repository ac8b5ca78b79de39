"""A tiny random Llama config (2 layers, hidden 64) for planning tests: its vocabulary is given, so no tokenizer
(and no weights) load unless a test builds the real model to compare with."""

from __future__ import annotations

import pytest

TINY = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 128, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 320}


def tiny_config(*overrides: str):
    from ember.config import apply_override, from_dict, validate
    from ember.config.schema import EmberConfig

    raw = {
        "model": {"name_or_path": "llama", "random_init": True, "config_overrides": dict(TINY), "dtype": "float32"},
        "data": {"datasets": [{"path": "unused.jsonl"}], "max_length": 16},
        "method": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.0},
        "train": {"per_device_train_batch_size": 2, "bf16": False},
    }
    for item in overrides:
        apply_override(raw, item)
    return validate(from_dict(EmberConfig, raw, "test"))


@pytest.fixture
def tiny_cfg():
    return tiny_config
