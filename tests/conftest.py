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


def tiny_dialogues(n: int = 8) -> list[dict]:
    """`n` short OpenAI-style conversations of different lengths (some multi-turn), in English and Chinese."""
    words = "red green blue amber violet silver olive coral".split()
    out = []
    for i in range(n):
        answer = " ".join(words[: 1 + i % len(words)])
        messages = [{"role": "user", "content": f"List {1 + i % 8} colours."}, {"role": "assistant", "content": answer}]
        if i % 3 == 2:
            messages += [{"role": "user", "content": "再说一遍。"}, {"role": "assistant", "content": f"好的：{answer}"}]
        out.append({"messages": messages})
    return out


@pytest.fixture
def tiny_run_config(tmp_path, tiny_model_config):
    """tiny_run_config("train.max_steps=4", ...) -> a validated `EmberConfig` for a seconds-long run.

    The tiny random Llama, 8 short dialogues written to tmp_path, fp32 (exact on every CPU), LoRA, constant lr,
    no checkpoints, no reporting, output in tmp_path/run. Dotted overrides change any of it.
    """
    import dataclasses
    import json

    from ember.config import apply_override, from_dict, validate
    from ember.config.schema import EmberConfig

    data = tmp_path / "dialogues.jsonl"
    if not data.exists():
        data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in tiny_dialogues()), encoding="utf-8")

    def build(*overrides: str):
        raw = {
            "stage": "sft",
            "model": dataclasses.asdict(tiny_model_config),
            # turns: the pinned losses of the training tests were measured on one sample per dialogue
            "data": {"datasets": [{"path": str(data)}], "max_length": 64, "cache": False, "shuffle": False,
                     "truncation": "turns"},
            "method": {"type": "lora", "rank": 4, "alpha": 8, "dropout": 0.0},
            "train": {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 1e-3,
                      "lr_scheduler_type": "constant", "logging_steps": 1, "bf16": False, "save_strategy": "no",
                      "report_to": "none", "seed": 0},
            "output": {"dir": str(tmp_path / "run")},
        }
        for item in overrides:
            apply_override(raw, item)
        return validate(from_dict(EmberConfig, raw, "test"))

    return build


@pytest.fixture(scope="session")
def tiny_llm_dir(tmp_path_factory, smollm2_dir) -> str:
    """A saved 2-layer random Llama with SmolLM2's tokenizer and chat template (loads in well under a second).

    The weights are drawn with std 0.5 rather than 0.02 so that greedy answers differ from prompt to prompt
    instead of repeating one token: serving tests can then tell whose answer a client got.
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    config = LlamaConfig(vocab_size=len(tok), max_position_embeddings=2048, initializer_range=0.5,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, **TINY_LLAMA)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("tiny_llm")
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def smollm2_adapter_run(tmp_path_factory, smollm2_dir) -> str:
    """`ember train` output of a 2-step LoRA run on the real SmolLM2 (adapter + tokenizer + template), ~20 s."""
    from ember.config import load_config
    from ember.training.run import train

    out = tmp_path_factory.mktemp("smollm2_lora")
    cfg = out / "run.yaml"
    cfg.write_text(
        "stage: sft\n"
        "model: {name_or_path: smollm2-135m-instruct}\n"
        f"data: {{datasets: [{{path: {ROOT / 'examples/data/quickstart.jsonl'}}}], max_length: 128, cache: false}}\n"
        "method: {type: lora, rank: 4}\n"
        "train: {max_steps: 2, per_device_train_batch_size: 2, logging_steps: 1, report_to: none, save_strategy: 'no'}\n"
        f"output: {{dir: {out / 'run'}}}\n",
        encoding="utf-8",
    )
    return str(train(load_config(str(cfg))).output_dir)


@pytest.fixture(scope="session")
def tiny_engine(tiny_llm_dir):
    """One Engine over `tiny_llm_dir`, shared by inference and serving tests."""
    from ember.inference.engine import Engine

    return Engine.load(tiny_llm_dir)


@pytest.fixture(scope="session")
def smollm2_engine(smollm2_adapter_run):
    """An Engine over the tuned SmolLM2 run (base + LoRA adapter), shared by the tests that need one."""
    from ember.inference.engine import Engine

    return Engine.load(smollm2_adapter_run)


@pytest.fixture
def chromium() -> str:
    """Path of Debian's Chromium for Playwright; skip without it, unless CI (EMBER_REQUIRE_BROWSER=1) demands it."""
    import shutil

    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not os.path.exists(path):
        message = "Chromium is not installed (apt-get install -y chromium)"
        if os.environ.get("EMBER_REQUIRE_BROWSER") == "1":
            pytest.fail(message + " but EMBER_REQUIRE_BROWSER=1")
        pytest.skip(message)
    return path
