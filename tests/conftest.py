"""Shared fixtures: the real SmolLM2 tokenizer/model (offline, cached), tiny random models, and ../shared/data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _shared_data_dir() -> Path | None:
    """`EMBER_SHARED_DATA` (set by .ci/run) must exist; otherwise ../shared/data is used when present."""
    env = os.environ.get("EMBER_SHARED_DATA")
    if env:
        path = Path(env)
        if not path.is_absolute():
            path = (ROOT / path).resolve()
        if not (path / "README.md").is_file():
            raise RuntimeError(f"EMBER_SHARED_DATA={env} is set but {path} holds no shared data (README.md missing)")
        return path
    default = ROOT.parent / "shared" / "data"
    return default if (default / "README.md").is_file() else None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    path = _shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is not present (set EMBER_SHARED_DATA to run these tests)")
    return path


@pytest.fixture(scope="session")
def smollm2_dir() -> str:
    """The embedded default model as a cached safetensors directory (converted from the GGUF once)."""
    from ember.models.loading import resolve_source

    return resolve_source("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smol_tokenizer(smollm2_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_dir)


TINY_LLAMA = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
}


@pytest.fixture
def tiny_model_config():
    """A `ModelConfig` for a 2-layer, hidden-64 random Llama with the SmolLM2 tokenizer."""
    from ember.config.schema import ModelConfig

    return ModelConfig(name_or_path="llama", random_init=True, config_overrides=dict(TINY_LLAMA), dtype="float32")
