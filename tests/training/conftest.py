"""Fixtures for the multi-process tests (DeepSpeed, multi-node): one saved tiny model and enough dialogues."""

from __future__ import annotations

import json

import pytest
import torch


@pytest.fixture(scope="session")
def saved_tiny_model(tmp_path_factory, smollm2_dir) -> str:
    """A saved tiny random Llama (ordinary init) with SmolLM2's tokenizer, loaded by every run of a comparison.

    ZeRO-3 builds a randomly initialised model already sharded, which draws other values than one process does,
    so runs compared step by step load the same weights instead of initialising their own.
    """
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from conftest import TINY_LLAMA

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    config = LlamaConfig(vocab_size=len(tok), tie_word_embeddings=True, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **TINY_LLAMA)
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("saved_tiny_model")
    LlamaForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture
def run_config(tiny_run_config, saved_tiny_model, tmp_path):
    """`tiny_run_config` on `saved_tiny_model` with 32 dialogues: a few steps of global batch 4 never reach an
    epoch's ragged end, where 1 and 2 processes would batch the remainder differently."""
    from conftest import tiny_dialogues

    data = tmp_path / "dialogues32.jsonl"
    data.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in tiny_dialogues(32)), encoding="utf-8")

    def build(*overrides: str):
        return tiny_run_config(f"model.name_or_path={saved_tiny_model}", "model.random_init=false",
                               "model.config_overrides={}", f"data.datasets=[{{path: '{data}'}}]", *overrides)

    return build
