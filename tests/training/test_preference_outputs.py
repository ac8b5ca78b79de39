"""A DPO run leaves the directory an SFT run leaves: chat, serve and export read it the same way, and what they send
the model is what preference training put before each answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ember.core.artifacts import TEMPLATE_INFO
from ember.training.run import train

ROOT = Path(__file__).resolve().parents[2]
QUESTION = "What is the capital of Australia?"  # a prompt of examples/data/dpo.jsonl


def test_a_dpo_run_is_chatted_with_served_and_exported_like_an_sft_run(tiny_run_config, tmp_path):
    from openai import OpenAI

    from ember.cli import main
    from ember.inference.engine import Engine
    from ember.inference.completion import GenerationOptions
    from ember.serving.api import create_app
    from ember.serving.background import serve_in_thread
    from ember.training.prepare import prepare_data

    sft = train(tiny_run_config("train.max_steps=1", f"output.dir={tmp_path / 'sft'}"))
    dpo_cfg = tiny_run_config("stage=dpo", f"data.datasets=[{{path: '{ROOT / 'examples/data/dpo.jsonl'}'}}]",
                              "train.max_steps=2", "train.learning_rate=1e-2", "data.max_length=256",
                              f"output.dir={tmp_path / 'dpo'}")
    dpo = train(dpo_cfg)
    layout = [sorted(p.name for p in run.output_dir.iterdir()) for run in (sft, dpo)]
    assert layout[0] == layout[1] and "adapter_model.safetensors" in layout[1]
    assert (sft.output_dir / TEMPLATE_INFO).read_text() == (dpo.output_dir / TEMPLATE_INFO).read_text()
    assert json.loads((dpo.output_dir / "data_report.json").read_text())["train_samples"] == 20

    # chat: the prompt ids the engine builds are those every pair of that question was trained after
    engine = Engine.load(str(dpo.output_dir))
    messages = [{"role": "user", "content": QUESTION}]
    pair = next(s for s in prepare_data(dpo_cfg, progress=False).data.train
                if QUESTION in engine.tokenizer.decode(s.chosen.input_ids[:s.prompt_length]))
    assert engine.prompt_ids(messages) == pair.chosen.input_ids[:pair.prompt_length]
    answer = engine.generate(messages, GenerationOptions(max_new_tokens=6))
    assert answer.completion_tokens == 6 or answer.finish_reason == "stop"

    # serve: the same answer over the API
    with serve_in_thread(create_app(engine, "dpo")) as url:
        client = OpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=60)
        reply = client.chat.completions.create(model="dpo", messages=messages, max_tokens=6, temperature=0)
    assert reply.choices[0].message.content == answer.text
    assert reply.usage.prompt_tokens == pair.prompt_length

    # export: the merged model gives the adapter model's logits on that prompt
    assert main(["export", "--model", str(dpo.output_dir), "--to", str(tmp_path / "merged")]) == 0
    from transformers import AutoModelForCausalLM

    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    ids = torch.tensor([pair.chosen.input_ids])
    with torch.no_grad():
        expected = engine.model(input_ids=ids).logits.float()
        got = merged(input_ids=ids).logits.float()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_the_firefly_dpo_example_trains_on_a_tiny_model(tmp_path, monkeypatch):
    """examples/firefly-qlora-dpo.yaml with only the model (and sizes) swapped: QLoRA DPO, two steps."""
    pytest.importorskip("bitsandbytes")
    from ember.config import load_config

    monkeypatch.chdir(ROOT)
    tiny = "{num_hidden_layers: 2, hidden_size: 64, intermediate_size: 128, num_attention_heads: 4, num_key_value_heads: 2}"
    cfg = load_config(ROOT / "examples" / "firefly-qlora-dpo.yaml", [
        "model.name_or_path=llama", "model.random_init=true", f"model.config_overrides={tiny}", "model.dtype=float32",
        "method.compute_dtype=float32", "data.max_length=256", "data.cache=false", "train.max_steps=2",
        "train.gradient_accumulation_steps=2", "train.gradient_checkpointing=false", "train.warmup_steps=0",
        "train.bf16=false", "train.report_to=none", "train.save_strategy=no", "train.logging_steps=1",
        f"output.dir={tmp_path / 'dpo'}"])
    assert cfg.stage == "dpo" and cfg.method.type == "qlora" and cfg.preference.beta == 0.1
    result = train(cfg)
    history = json.loads((result.output_dir / "trainer_state.json").read_text())["log_history"]
    assert history[0]["loss"] == float(torch.tensor(0.6931471805599453, dtype=torch.float32))
    assert {"rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
            "logps/rejected"} <= history[0].keys()
