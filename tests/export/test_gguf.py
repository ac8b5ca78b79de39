"""`ember export --format gguf`: the file loads back through `transformers` (gguf_file=) with the same logits
(f32: ≤ 1e-4; f16 / bf16 / q8_0: a tolerance relative to the logit range), the same greedy answer, the same
tokenizer and the chat template; llama.cpp names and q/k row order; padded vocabularies keep their rows."""

from __future__ import annotations

import pytest
import torch

from .conftest import CHATML, export_cli

TEXT = "Hello there, how are you? 你好 Paris. 1 + 1 = 2"
# Max |Δlogit| against the unrounded model, as a fraction of max |logit|: loose bounds, since a random model
# amplifies rounding (measured on the fixture: f16 0.5 %, bf16 6 %, q8_0 20 %).
RELATIVE_TOLERANCE = {"f16": 0.02, "bf16": 0.15, "q8_0": 0.4}
SMOLLM2_Q8_TOLERANCE = 0.06  # the real model (Q4_1-sourced weights) at q8_0: measured 3.1–3.6 % of the range


def load_gguf(path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model, AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def logits(model, ids) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0]


@pytest.fixture(scope="module")
def merged(base_dir, adapter_dir, tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = tmp_path_factory.mktemp("merged") / "m"
    export_cli("--model", str(base_dir), "--adapter", str(adapter_dir), "--to", str(out))
    return AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32), AutoTokenizer.from_pretrained(out)


def test_q_and_k_rows_are_reordered_from_halves_to_pairs():
    from ember.export.gguf import halves_to_pairs

    rows = torch.arange(8.0).reshape(8, 1)  # 2 heads of dim 4: halves (0,1 | 2,3) and (4,5 | 6,7)
    assert halves_to_pairs(rows, heads=2).flatten().tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


def test_f32_gguf_loads_back_with_identical_logits_tokenizer_and_template(base_dir, adapter_dir, merged, tmp_path):
    import gguf

    path = tmp_path / "model-f32.gguf"
    export_cli("--model", str(base_dir), "--adapter", str(adapter_dir), "--to", str(path), "--format", "gguf",
               "--gguf-type", "f32")
    model, tok = load_gguf(path)
    ref_model, ref_tok = merged
    ids = ref_tok(TEXT)["input_ids"]
    assert tok(TEXT)["input_ids"] == ids
    assert tok.decode(ids) == TEXT
    assert tok.chat_template == CHATML
    assert (tok.eos_token, tok.bos_token, tok.pad_token) == ("<|im_end|>", "<|im_start|>", "<|im_end|>")
    assert (logits(model, ids) - logits(ref_model, ids)).abs().max().item() <= 1e-4
    prompt = torch.tensor([ref_tok.apply_chat_template([{"role": "user", "content": "Hello there"}],
                                                       add_generation_prompt=True)["input_ids"]])
    greedy = dict(max_new_tokens=12, do_sample=False, eos_token_id=2, pad_token_id=2)
    assert model.generate(prompt, **greedy).tolist() == ref_model.generate(prompt, **greedy).tolist()

    reader = gguf.GGUFReader(path)
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    assert field("general.architecture") == "llama"
    assert (field("tokenizer.ggml.model"), field("tokenizer.ggml.pre")) == ("gpt2", "gpt-2")
    assert field("tokenizer.ggml.eos_token_id") == 2 and field("tokenizer.ggml.add_bos_token") is False
    assert field("tokenizer.chat_template") == CHATML
    assert len(field("tokenizer.ggml.tokens")) == field("llama.vocab_size") == len(ref_tok)
    names = {t.name for t in reader.tensors}
    layer = {"attn_norm", "attn_q", "attn_k", "attn_v", "attn_output", "ffn_norm", "ffn_gate", "ffn_up", "ffn_down"}
    assert names == {"token_embd.weight", "output_norm.weight"} | {f"blk.{i}.{n}.weight" for i in (0, 1) for n in layer}


def rounded_like_gguf(model, kind: str):
    """A copy of `model` whose 2-D weights went through the GGUF tensor type and back (norms stay f32)."""
    import copy

    import gguf
    import numpy as np

    qtype = {"f16": gguf.GGMLQuantizationType.F16, "bf16": gguf.GGMLQuantizationType.BF16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}[kind]
    out = copy.deepcopy(model)
    with torch.no_grad():
        for p in out.parameters():
            if p.ndim == 2:
                data = p.numpy()
                back = gguf.quants.dequantize(gguf.quants.quantize(data, qtype), qtype).astype(np.float32)
                p.copy_(torch.from_numpy(back.reshape(data.shape)))
    return out


@pytest.mark.parametrize("kind", ["f16", "bf16", "q8_0"])
def test_quantised_gguf_equals_the_merged_model_with_rounded_weights(base_dir, adapter_dir, merged, tmp_path, kind):
    """Rounding is the only change: the file's logits equal those of the merged model whose weights were rounded
    the same way (≤ 1e-4). How far rounding itself moves the logits depends on the model; the reference error is
    checked loosely (this deliberately chaotic random model amplifies it: f16 0.5 %, bf16 6 %, q8_0 20 % of the
    logit range; the real SmolLM2 at q8_0: see the slow test below)."""
    import gguf

    path = tmp_path / f"model-{kind}.gguf"
    export_cli("--model", str(base_dir), "--adapter", str(adapter_dir), "--to", str(path), "--format", "gguf",
               "--gguf-type", kind)
    types = {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert types["blk.0.attn_q.weight"] == kind.upper() and types["blk.0.attn_norm.weight"] == "F32"
    model, _ = load_gguf(path)
    ref_model, ref_tok = merged
    ids = ref_tok(TEXT)["input_ids"]
    got = logits(model, ids)
    assert (got - logits(rounded_like_gguf(ref_model, kind), ids)).abs().max().item() <= 1e-4
    want = logits(ref_model, ids)
    assert (got - want).abs().max().item() <= RELATIVE_TOLERANCE[kind] * want.abs().max().item()


def test_extended_vocabulary_keeps_padded_rows_in_gguf(base_dir, extended_adapter_dir, tmp_path):
    import gguf
    from transformers import AutoTokenizer

    from ember.inference.loading import load_for_inference

    path = tmp_path / "ext.gguf"
    export_cli("--model", str(base_dir), "--adapter", str(extended_adapter_dir), "--to", str(path), "--format", "gguf",
               "--gguf-type", "f32")
    ext_tok = AutoTokenizer.from_pretrained(extended_adapter_dir)
    reader = gguf.GGUFReader(path)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    rows = -(-len(ext_tok) // 64) * 64
    assert len(tokens) == rows == reader.fields["llama.vocab_size"].contents()
    assert tokens[len(ext_tok):] == [f"[PAD{i}]" for i in range(len(ext_tok), rows)]
    assert set(types[len(ext_tok):]) == {gguf.TokenType.UNUSED}
    new = {t: types[tokens.index(t)] for t in ("<tool>", "</tool>", "<|sep|>")}
    assert new == {"<tool>": gguf.TokenType.USER_DEFINED, "</tool>": gguf.TokenType.USER_DEFINED,
                   "<|sep|>": gguf.TokenType.CONTROL}
    assert "output.weight" in {t.name for t in reader.tensors}  # embed and head were trained apart

    model, tok = load_gguf(path)
    text = "<tool>call</tool> <|sep|> hello"
    ids = ext_tok(text)["input_ids"]
    assert tok(text)["input_ids"] == ids
    assert set(ext_tok.convert_tokens_to_ids(["<tool>", "</tool>", "<|sep|>"])) <= set(ids)  # each one whole token
    assert model.config.vocab_size == rows
    loaded = load_for_inference(str(base_dir), str(extended_adapter_dir), dtype="float32")
    assert (logits(model, ids) - logits(loaded.model, ids)).abs().max().item() <= 1e-4


def test_gguf_export_refuses_other_architectures():
    from types import SimpleNamespace

    from ember.errors import ConfigError
    from ember.export.gguf import _check_supported

    with pytest.raises(ConfigError, match="supports the llama .* and qwen2 .*'gemma'.*--format hf"):
        _check_supported(SimpleNamespace(model_type="gemma"))
    with pytest.raises(ConfigError, match="use_sliding_window"):
        _check_supported(SimpleNamespace(model_type="qwen2", use_sliding_window=True))
    assert _check_supported(SimpleNamespace(model_type="qwen2")).name == "qwen2"


@pytest.mark.parametrize("kind", ["q4_k_m", "q5_k_m"])
def test_k_quants_are_refused_with_the_command_that_makes_them(base_dir, tmp_path, kind):
    import gguf
    import numpy as np

    from ember.cli import build_parser
    from ember.errors import ConfigError
    from ember.export.merge import export

    assert build_parser().parse_args(["export", "--model", "m", "--to", "t", "--gguf-type", kind]).gguf_type == kind
    with pytest.raises(ConfigError, match=rf"--gguf-type {kind}: .*llama-quantize MODEL-f16.gguf .*{kind.upper()}"):
        export(str(base_dir), str(tmp_path / "m.gguf"), fmt="gguf", gguf_type=kind)
    assert not any(tmp_path.iterdir())
    with pytest.raises(NotImplementedError):  # why: the gguf package cannot make K-quant blocks
        gguf.quants.quantize(np.zeros((1, 256), np.float32), gguf.GGMLQuantizationType.Q4_K)


@pytest.mark.smollm2
@pytest.mark.slow
def test_smollm2_gguf_answers_like_the_tuned_model(smollm2_adapter_run, smollm2_engine, tmp_path):
    """The real vocabulary (49,152 tokens, 48,900 merges, pre-tokenizer `smollm`), q8_0: on this prompt the same
    greedy answer as base + adapter (not so on every prompt: bench/gguf_quality.py measured 6 of 8), logits within
    SMOLLM2_Q8_TOLERANCE of their range. Slow (~30 s): `transformers` parses the GGUF in pure Python."""
    path = tmp_path / "smol-q8_0.gguf"
    export_cli("--model", smollm2_adapter_run, "--to", str(path), "--format", "gguf", "--gguf-type", "q8_0")
    import gguf

    assert gguf.GGUFReader(path).fields["tokenizer.ggml.pre"].contents() == "smollm"  # what llama.cpp's converter writes
    model, tok = load_gguf(path)
    ref, ref_tok = smollm2_engine.model, smollm2_engine.tokenizer
    assert tok.chat_template == ref_tok.chat_template
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = smollm2_engine.prompt_ids(messages)
    assert tok.apply_chat_template(messages, add_generation_prompt=True)["input_ids"] == prompt
    greedy = dict(max_new_tokens=10, do_sample=False, eos_token_id=2, pad_token_id=2)
    x = torch.tensor([prompt])
    with torch.no_grad():
        assert model.generate(x, **greedy).tolist() == ref.generate(input_ids=x, **greedy).tolist()
    want = logits(ref, prompt)
    diff = (logits(model, prompt) - want).abs().max().item()
    assert diff <= SMOLLM2_Q8_TOLERANCE * want.abs().max().item()
