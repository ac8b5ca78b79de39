"""`ember export --format gguf` of a Qwen2 model (+ LoRA): llama.cpp's qwen2 layout — q/k/v biases stored, q/k rows
not reordered (llama.cpp rotates Qwen2 by halves, as transformers does), rope_theta 1e6 — and the file reads back
through the gguf reader and through transformers (gguf_file=) with the merged model's logits (f32: ≤ 1e-4), the same
tokenizer ids (Qwen2's split: single digits) and `tokenizer.ggml.pre = qwen2`."""

from __future__ import annotations

import pytest
import torch

from .conftest import CHATML, export_cli, save_adapter, small_tokenizer, tiny_qwen2

TEXT = "Hello there, how are you? 你好 Paris. 1 + 1 = 2; 2024 * 333"


@pytest.fixture(scope="module")
def qwen2_run(tmp_path_factory):
    """A tiny Qwen2 base with a Qwen2-style tokenizer, a LoRA adapter on it, and its merged HF export."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root = tmp_path_factory.mktemp("qwen2")
    tok = small_tokenizer("qwen2")
    tiny_qwen2(len(tok)).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    save_adapter(tiny_qwen2(len(tok)), tok, root / "lora")
    export_cli("--model", str(root / "base"), "--adapter", str(root / "lora"), "--to", str(root / "merged"))
    merged = AutoModelForCausalLM.from_pretrained(root / "merged", dtype=torch.float32)
    return root, merged, AutoTokenizer.from_pretrained(root / "merged")


@pytest.fixture(scope="module")
def qwen2_gguf(qwen2_run):
    root = qwen2_run[0]
    path = root / "qwen2-f32.gguf"
    export_cli("--model", str(root / "base"), "--adapter", str(root / "lora"), "--to", str(path), "--format", "gguf",
               "--gguf-type", "f32")
    return path


def test_qwen2_gguf_layout_and_metadata(qwen2_run, qwen2_gguf):
    import gguf

    merged, path = qwen2_run[1], qwen2_gguf
    reader = gguf.GGUFReader(path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "qwen2"
    assert (field("tokenizer.ggml.model"), field("tokenizer.ggml.pre")) == ("gpt2", "qwen2")
    assert field("qwen2.rope.freq_base") == 1000000.0 and field("qwen2.block_count") == 2
    assert field("qwen2.attention.head_count_kv") == 2 and field("tokenizer.chat_template") == CHATML
    tensors = {t.name: t for t in reader.tensors}
    layer = {f"{n}.weight" for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate",
                                      "ffn_up", "ffn_down")} | {"attn_q.bias", "attn_k.bias", "attn_v.bias"}
    assert set(tensors) == {"token_embd.weight", "output_norm.weight"} | {f"blk.{i}.{n}" for i in (0, 1) for n in layer}
    state = merged.state_dict()
    for hf, name in (("model.layers.1.self_attn.q_proj.weight", "blk.1.attn_q.weight"),
                     ("model.layers.1.self_attn.k_proj.bias", "blk.1.attn_k.bias"),
                     ("model.layers.0.self_attn.v_proj.bias", "blk.0.attn_v.bias")):
        stored = torch.from_numpy(tensors[name].data.copy()).reshape(state[hf].shape)
        assert torch.equal(stored, state[hf]), name  # rows as transformers has them: no halves → pairs for qwen2
    assert state["model.layers.0.self_attn.q_proj.bias"].abs().max() > 0.1  # biases are real, not zeros


def test_qwen2_gguf_loads_back_in_transformers_with_the_merged_logits(qwen2_run, qwen2_gguf):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    root, merged, ref_tok = qwen2_run
    path = qwen2_gguf
    model = AutoModelForCausalLM.from_pretrained(root, gguf_file=path.name, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(root, gguf_file=path.name)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    ids = ref_tok(TEXT)["input_ids"]
    assert tok(TEXT)["input_ids"] == ids and tok.decode(ids) == TEXT
    assert ref_tok.tokenize(" 2024") == ["Ġ", "2", "0", "2", "4"]  # Qwen2's split: one digit at a time
    with torch.no_grad():
        got, want = model(torch.tensor([ids])).logits[0], merged(torch.tensor([ids])).logits[0]
    assert (got - want).abs().max().item() <= 1e-4
    assert want.abs().max().item() > 1.0  # a model that says something
