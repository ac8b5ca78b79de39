"""Write a (merged) Llama or Qwen2 model as one GGUF file, the layout llama.cpp reads.

Tensors get llama.cpp's names (`token_embd`, `blk.N.attn_q`, ...). llama.cpp's `llama` architecture applies rotary
embeddings to interleaved pairs while Hugging Face Llama rotates the two halves of each head, so for Llama the rows
of every q and k projection are reordered per head (halves → pairs), exactly as llama.cpp's own converter does;
readers (llama.cpp, `transformers` with `gguf_file=`) undo it. `qwen2` rotates halves in llama.cpp too (NEOX
style), so its rows stay as they are, and its q/k/v biases are stored. 1-D tensors (norms, biases) stay f32, as
llama.cpp expects.

The tokenizer goes in as metadata: byte-level BPE tokens, merges, token types, special ids, `add_bos_token`, the
pre-tokenizer name llama.cpp's converter would choose (ember/export/pretokenizer.py; unknown → refused) and
the chat template the model was trained with. The token list has exactly one entry per embedding row: when the
model has more rows than the tokenizer has tokens (embeddings padded to a multiple of 64 after a vocabulary
extension), the extra rows become unused `[PAD<id>]` tokens, as llama.cpp's converter writes them.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from ember.errors import ConfigError
from ember.export.pretokenizer import identify as identify_pre_tokenizer

log = logging.getLogger(__name__)

GGUF_TYPES = ("f32", "f16", "bf16", "q8_0")
# K-quant mixtures users ask for. No maintained quantiser for them installs here: the `gguf` package (0.19)
# quantizes Q4_0/Q4_1/Q5_0/Q5_1/Q8_0/BF16 but raises NotImplementedError for every K type, llama-cpp-python has no
# wheel, and a Q4_K_M file is a per-tensor mixture chosen by llama.cpp's quantiser. So they are refused, with the fix.
K_QUANT_TYPES = ("q4_k_m", "q5_k_m")


@dataclass(frozen=True)
class Architecture:
    name: str  # general.architecture
    reorder_qk: bool  # llama.cpp rotates interleaved pairs for this architecture (HF rotates halves)
    biases: tuple[str, ...] = ()  # modules whose bias is stored (and required)


ARCHITECTURES = {
    "llama": Architecture("llama", reorder_qk=True),
    "qwen2": Architecture("qwen2", reorder_qk=False,
                          biases=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
}
_LAYER_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def gguf_name(hf_name: str, arch: Architecture = ARCHITECTURES["llama"]) -> Optional[str]:
    """llama.cpp's name for a Hugging Face Llama/Qwen2 parameter (None: not stored, e.g. rotary buffers).

    Raises:
        ConfigError: a bias the architecture has no place for (it would be dropped silently).
    """
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf_name in fixed:
        return fixed[hf_name]
    parts = hf_name.split(".")
    if parts[:2] != ["model", "layers"] or parts[-1] not in ("weight", "bias"):
        return None
    module = ".".join(parts[3:-1])
    if module not in _LAYER_NAMES:
        return None
    if parts[-1] == "bias" and module not in arch.biases:
        raise ConfigError(f"GGUF export ({arch.name}): {hf_name} has no place in llama.cpp's {arch.name} layout")
    return f"blk.{parts[2]}.{_LAYER_NAMES[module]}.{parts[-1]}"


def halves_to_pairs(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Reorder each head's output rows from [first half | second half] to interleaved (x0, x_half, x1, ...)."""
    rows = weight.shape[0]
    return weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:]).transpose(1, 2).reshape(weight.shape)


def _check_supported(config) -> Architecture:
    model_type = getattr(config, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise ConfigError(
            f"GGUF export supports the llama (SmolLM2, Llama 2/3, TinyLlama, ...) and qwen2 (Qwen1.5, Qwen2, "
            f"Qwen2.5) architectures; this model is '{model_type or '?'}'. Export with --format hf and convert that "
            "directory with llama.cpp's convert_hf_to_gguf.py"
        )
    if model_type == "llama" and (getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False)):
        raise ConfigError("GGUF export: Llama models with attention/MLP biases are not supported")
    if model_type == "qwen2" and getattr(config, "use_sliding_window", False):
        raise ConfigError("GGUF export: Qwen2 with use_sliding_window=true is not supported (llama.cpp ignores it)")
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    if rope.get("rope_type", "default") not in ("default", None):
        raise ConfigError(f"GGUF export: rope type '{rope.get('rope_type')}' is not supported (only default RoPE)")
    return ARCHITECTURES[model_type]


def _rope_theta(config) -> float:
    rope = getattr(config, "rope_parameters", None) or {}
    return float(rope.get("rope_theta") or getattr(config, "rope_theta", 10000.0))


def tokenizer_metadata(tokenizer, rows: int) -> dict:
    """Tokens, types and merges of a byte-level BPE tokenizer, padded to `rows` entries."""
    import gguf

    state = json.loads(tokenizer.backend_tokenizer.to_str())
    model = state["model"]
    if model.get("type") != "BPE" or not _is_byte_level(state.get("pre_tokenizer")):
        raise ConfigError(
            "GGUF export writes byte-level BPE tokenizers (GPT-2 style, like SmolLM2's); this tokenizer is "
            f"'{model.get('type')}'. Export with --format hf and convert with llama.cpp's convert_hf_to_gguf.py"
        )
    size = len(tokenizer)
    if size > rows:
        raise ConfigError(f"the tokenizer has {size} tokens but the model only {rows} embedding rows")
    tokens = tokenizer.convert_ids_to_tokens(list(range(size)))
    added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
    types = []
    for i, token in enumerate(tokens):
        if token is None:  # a hole in the id space: keep ids aligned with embedding rows
            tokens[i] = f"[PAD{i}]"
            types.append(gguf.TokenType.UNUSED)
        elif token in added:
            types.append(gguf.TokenType.CONTROL if added[token].special else gguf.TokenType.USER_DEFINED)
        else:
            types.append(gguf.TokenType.NORMAL)
    for i in range(size, rows):
        tokens.append(f"[PAD{i}]")
        types.append(gguf.TokenType.UNUSED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return {"tokens": tokens, "types": types, "merges": merges, "pre": identify_pre_tokenizer(tokenizer)}


def _is_byte_level(pre) -> bool:
    if not pre:
        return False
    if pre.get("type") == "ByteLevel":
        return True
    return any(_is_byte_level(p) for p in pre.get("pretokenizers", []))


def _tensor_data(name: str, tensor: torch.Tensor, kind: str):
    import gguf

    data = tensor.detach().to(torch.float32).cpu().numpy()
    if data.ndim == 1 or kind == "f32":
        return data, None
    if kind == "f16":
        return data.astype(np.float16), None
    qtype = gguf.GGMLQuantizationType.BF16 if kind == "bf16" else gguf.GGMLQuantizationType.Q8_0
    if kind == "q8_0" and data.shape[-1] % 32:
        log.warning("%s: %d columns are not a multiple of 32; kept in f16", name, data.shape[-1])
        return data.astype(np.float16), None
    return gguf.quants.quantize(data, qtype), qtype


def check_type(kind: str) -> None:
    """Raises: ConfigError for a type Ember cannot write (K-quants: with the llama.cpp command that makes them)."""
    if kind in K_QUANT_TYPES:
        raise ConfigError(
            f"--gguf-type {kind}: K-quant files need llama.cpp's quantiser, and none that Ember can call installs "
            "here (the gguf package has no K-quant quantizer; llama-cpp-python has no wheel). Export "
            f"--gguf-type f16 and run `llama-quantize MODEL-f16.gguf MODEL-{kind}.gguf {kind.upper()}` from llama.cpp"
        )
    if kind not in GGUF_TYPES:
        raise ConfigError(f"--gguf-type {kind!r}: choose one of {', '.join(GGUF_TYPES)}")


def write_gguf(model, tokenizer, path: Path, kind: str = "f16", stop_token_ids: Optional[list[int]] = None,
               name: Optional[str] = None) -> Path:
    """Write `model` (a merged, unwrapped Llama) and its tokenizer to `path`."""
    import gguf

    check_type(kind)
    config = model.config
    arch = _check_supported(config)
    rows = model.get_input_embeddings().weight.shape[0]
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    meta = tokenizer_metadata(tokenizer, rows)

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, arch.name)
    writer.add_name(name or path.stem)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_block_count(int(config.num_hidden_layers))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(heads))
    writer.add_head_count_kv(int(kv_heads))
    writer.add_rope_dimension_count(int(head_dim))
    if head_dim * heads != config.hidden_size:
        writer.add_key_length(int(head_dim))
        writer.add_value_length(int(head_dim))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_vocab_size(int(rows))
    file_types = {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                  "bf16": gguf.LlamaFileType.MOSTLY_BF16, "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}
    writer.add_file_type(int(file_types[kind]))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(meta["pre"])
    writer.add_token_list(meta["tokens"])
    writer.add_token_types(meta["types"])
    writer.add_token_merges(meta["merges"])
    for token_id, add in ((tokenizer.bos_token_id, writer.add_bos_token_id),
                          (tokenizer.eos_token_id, writer.add_eos_token_id),
                          (tokenizer.unk_token_id, writer.add_unk_token_id),
                          (tokenizer.pad_token_id, writer.add_pad_token_id)):
        if token_id is not None:
            add(int(token_id))
    end_of_turn = [t for t in (stop_token_ids or []) if t != tokenizer.eos_token_id]
    if end_of_turn:  # the template ends a turn with a token other than EOS (e.g. <|eot_id|>): llama.cpp stops on it
        writer.add_eot_token_id(int(end_of_turn[0]))
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(bool(probe) and tokenizer.bos_token_id is not None and probe[0] == tokenizer.bos_token_id)
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)

    tied = bool(getattr(config, "tie_word_embeddings", False))
    state = model.state_dict()
    missing = [f"model.layers.0.{m}.bias" for m in arch.biases if f"model.layers.0.{m}.bias" not in state]
    if missing:
        raise ConfigError(f"GGUF export ({arch.name}): the model has no {', '.join(missing)}, which llama.cpp expects")
    for hf_name, tensor in state.items():
        target = gguf_name(hf_name, arch)
        if target is None or (tied and target == "output.weight"):
            continue  # a tied head is the embedding matrix; llama.cpp reuses token_embd when output is absent
        if arch.reorder_qk and target.rsplit(".", 2)[-2] == "attn_q":
            tensor = halves_to_pairs(tensor, heads)  # a bias reorders like its rows
        elif arch.reorder_qk and target.rsplit(".", 2)[-2] == "attn_k":
            tensor = halves_to_pairs(tensor, kv_heads)
        data, raw = _tensor_data(target, tensor, kind)
        writer.add_tensor(target, data, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=True)
    writer.close()
    return path
