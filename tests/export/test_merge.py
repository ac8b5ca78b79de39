"""`ember export`: merged LoRA equals base + adapter; the merged directory stands alone; vocabularies survive."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import CHATML, export_cli

TEXT = "Hello there, how are you? 你好 <|im_end|> Paris."


def logits_of(model, tokenizer, text: str = TEXT) -> torch.Tensor:
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        return model(ids).logits[0].float()


def adapter_logits(model: str, adapter: str | None = None) -> torch.Tensor:
    from ember.inference.loading import load_for_inference

    loaded = load_for_inference(model, adapter, dtype="float32")
    return logits_of(loaded.model, loaded.tokenizer)


def test_merged_logits_equal_base_plus_adapter(base_dir, adapter_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export_cli("--model", str(base_dir), "--adapter", str(adapter_dir), "--to", str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    want = adapter_logits(str(base_dir), str(adapter_dir))
    assert (logits_of(merged, tok) - want).abs().max().item() <= 1e-4
    assert (adapter_logits(str(base_dir)) - want).abs().max().item() > 0.1  # the adapter really changes the model
    assert not any("lora" in name for name, _ in merged.named_parameters())


SCRIPT = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
d = sys.argv[1]
tok = AutoTokenizer.from_pretrained(d)
model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
ids = tok.apply_chat_template([{"role": "user", "content": "Hello there"}], add_generation_prompt=True,
                              return_dict=True, return_tensors="pt")
out = model.generate(**ids, max_new_tokens=8, do_sample=False)
print(json.dumps({"ember_imported": any(m == "ember" or m.startswith("ember.") for m in sys.modules),
                  "eos": model.generation_config.eos_token_id, "pad": model.generation_config.pad_token_id,
                  "template": tok.chat_template, "new": out[0, ids["input_ids"].shape[1]:].tolist()}))
"""


def test_merged_directory_loads_with_plain_transformers(base_dir, adapter_dir, tmp_path):
    from ember.inference.engine import Engine, GenerationOptions
    from ember.inference.completion import without_unfinished_character

    export_cli("--model", str(base_dir), "--adapter", str(adapter_dir), "--to", str(tmp_path / "merged"))
    files = {p.name for p in (tmp_path / "merged").iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "ember_template.json", "ember_export.json"} <= files
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "merged")], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120, env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["ember_imported"] is False
    assert got["eos"] == 2 and got["pad"] == 2  # <|im_end|>: the template's stop token
    assert got["template"] == CHATML
    engine = Engine.load(str(base_dir), str(adapter_dir))
    prompt = engine.prompt_ids([{"role": "user", "content": "Hello there"}])
    rows = engine.model.generate(input_ids=torch.tensor([prompt]), max_new_tokens=8, do_sample=False,
                                 eos_token_id=2, pad_token_id=2)
    assert got["new"] == rows[0, len(prompt):].tolist()
    answer = engine.generate([{"role": "user", "content": "Hello there"}], GenerationOptions(max_new_tokens=8))
    text = engine.tokenizer.decode([t for t in got["new"] if t != 2], skip_special_tokens=True)
    if answer.finish_reason == "length":  # a character cut by the limit is dropped, not shown as U+FFFD
        assert 2 not in got["new"]
        text = without_unfinished_character(text)
    assert answer.text == text


def test_extended_vocabulary_survives_the_merge(base_dir, extended_adapter_dir, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export_cli("--model", str(base_dir), "--adapter", str(extended_adapter_dir), "--to", str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    base_tok = AutoTokenizer.from_pretrained(base_dir)
    assert len(tok) == len(base_tok) + 3
    rows = merged.get_input_embeddings().weight.shape[0]
    assert rows == merged.config.vocab_size == -(-len(tok) // 64) * 64  # padded to a multiple of 64
    assert merged.get_output_embeddings().weight.shape[0] == rows
    assert merged.config.tie_word_embeddings is False  # embed and head were trained apart: saved untied
    assert len(tok("<tool>x</tool><|sep|>")["input_ids"]) == 4
    record = json.loads((tmp_path / "merged" / "ember_export.json").read_text())
    assert (record["embedding_rows"], record["tokenizer_size"]) == (rows, len(tok))
    from ember.inference.loading import load_for_inference

    loaded = load_for_inference(str(base_dir), str(extended_adapter_dir), dtype="float32")
    text = "<tool>call</tool> <|sep|> hello"
    assert (logits_of(merged, tok, text) - logits_of(loaded.model, loaded.tokenizer, text)).abs().max().item() <= 1e-4


def test_export_never_overwrites(base_dir, tmp_path):
    from ember.errors import ConfigError
    from ember.export.merge import export

    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("keep")
    with pytest.raises(ConfigError, match="not empty"):
        export(str(base_dir), str(tmp_path / "taken"))
    assert (tmp_path / "taken" / "x").read_text() == "keep"


@pytest.mark.parametrize("to", ["x.gguf", "X.GGUF"])
def test_a_gguf_name_without_format_gguf_is_refused_before_merging(base_dir, tmp_path, monkeypatch, capsys, to):
    """--format hf (the default) once wrote a directory named x.gguf, which then read back as a missing GGUF file."""
    from ember.cli import main

    def never(*args, **kwargs):
        raise AssertionError("merged before the arguments were checked")

    monkeypatch.setattr("ember.export.merge.merge", never)
    target = tmp_path / to
    assert main(["export", "--model", str(base_dir), "--to", str(target)]) == 2
    assert capsys.readouterr().err == (
        f"error: --to {target} names a GGUF file, but --format hf (the default) writes a directory: add --format "
        "gguf to write a GGUF file, or give --to a directory name\n")
    assert not target.exists()


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_adapter_merge_matches(smollm2_adapter_run, smollm2_engine, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    export_cli("--model", smollm2_adapter_run, "--to", str(tmp_path / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(tmp_path / "merged")
    assert merged.config.tie_word_embeddings and merged.config.vocab_size == 49152
    assert merged.generation_config.eos_token_id == 2
    want = logits_of(smollm2_engine.model, smollm2_engine.tokenizer)
    assert (logits_of(merged, tok) - want).abs().max().item() <= 1e-4
    assert Path(tmp_path / "merged" / "chat_template.jinja").read_text() == tok.chat_template
