"""Export fixtures: a tiny Llama with its own small byte-level BPE vocabulary (so GGUF files load back in well
under a second) and LoRA adapters on it whose weights are far from zero (so merging visibly changes logits)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["Hello there, how are you today? I am fine, thank you very much.", "The capital of France is Paris.",
          "你好，今天天气很好。我们去公园吧。", "system user assistant: answer briefly, please!", "1 + 1 = 2; 2 * 3 = 6."]
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2)


def small_tokenizer(split: str | None = None):
    """A 420-token byte-level BPE trained on CORPUS; `split` names the normalizer + pre-tokenizer to use (one of
    ember.export.pretokenizer.REFERENCE_SPLITS; default GPT-2's ByteLevel)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if split is None:
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        from ember.export.pretokenizer import REFERENCE_SPLITS

        normalizer, pre_tokenizer = REFERENCE_SPLITS[split]
        backend = Tokenizer.from_str(json.dumps({
            "version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer, "post_processor": None, "decoder": None,
            "model": {"type": "BPE", "vocab": {}, "merges": []}}))
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(CORPUS * 10, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  pad_token="<|im_end|>", unk_token="<|endoftext|>")
    tok.chat_template = CHATML
    return tok


def tiny_llama(vocab: int, tied: bool = True, rope_theta: float = 10000.0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab, max_position_embeddings=256, initializer_range=0.3, tie_word_embeddings=tied,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, rope_theta=rope_theta, **TINY)
    return LlamaForCausalLM(config)


def tiny_qwen2(vocab: int, tied: bool = True):
    """A random 2-layer Qwen2 (q/k/v biases drawn too: Qwen2's init zeroes them, which would hide a lost bias)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=vocab, max_position_embeddings=256, initializer_range=0.3, tie_word_embeddings=tied,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, rope_theta=1000000.0, **TINY)
    model = Qwen2ForCausalLM(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5)
    return model


def save_adapter(model, tokenizer, out: Path, modules_to_save=None) -> Path:
    """Wrap `model` in LoRA on every projection, push the LoRA weights far from 0, save it like `ember train` does."""
    from peft import LoraConfig, get_peft_model

    from ember.data.render import Renderer

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                           "up_proj", "down_proj"],
                        modules_to_save=modules_to_save, task_type="CAUSAL_LM")
    peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.add_(torch.randn(p.shape, generator=generator) * 0.2)
    peft_model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / "ember_template.json").write_text(json.dumps(Renderer(tokenizer).identity), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    tok = small_tokenizer()
    out = tmp_path_factory.mktemp("small_base")
    tiny_llama(len(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def adapter_dir(base_dir, tmp_path_factory) -> Path:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    return save_adapter(model, AutoTokenizer.from_pretrained(base_dir), tmp_path_factory.mktemp("small_lora"))


@pytest.fixture(scope="module")
def extended_adapter_dir(base_dir, tmp_path_factory) -> Path:
    """A vocabulary extension: 3 new tokens, embeddings padded to a multiple of 64, embed/head trained beside LoRA."""
    from transformers import AddedToken, AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_dir)
    tok.add_tokens([AddedToken("<tool>", normalized=False), AddedToken("</tool>", normalized=False)])
    tok.add_special_tokens({"additional_special_tokens": ["<|sep|>"]})
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model.resize_token_embeddings(len(tok), pad_to_multiple_of=64)
    return save_adapter(model, tok, tmp_path_factory.mktemp("extended_lora"), ["embed_tokens", "lm_head"])


def export_cli(*argv: str) -> None:
    from ember.cli import main

    assert main(["export", *argv]) == 0
