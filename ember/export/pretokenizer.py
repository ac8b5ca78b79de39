"""Which `tokenizer.ggml.pre` a GGUF needs: the name of the text splitting llama.cpp applies before BPE.

llama.cpp cannot run a tokenizer.json; it knows a fixed set of pre-tokenizers by name (regex lists in its vocab
code), and a wrong name silently changes tokenization (for Llama-3 or Qwen2 style tokenizers: digits, contractions,
punctuation runs). Two ways to tell, in this order:

1. **The converter's way** (llama.cpp `convert_hf_to_gguf.py`, `get_vocab_base_pre`): encode a fixed probe text with
   the tokenizer, hash the list of ids (sha256 of `str(ids)`) and look the hash up in a table built from published
   tokenizers. Same vocabulary + same splitting = same hash, so for an unchanged base tokenizer Ember writes exactly
   what the converter writes (the embedded SmolLM2: `smollm`).
2. **A derived vocabulary** (one trained with `ember vocab train`, or extended with `ember vocab extend`) has other
   ids, so no hash can match; the converter refuses such a tokenizer. Its splitting, though, is what `pre` names,
   and it is vocabulary-free: the tokenizer's own normalizer + pre-tokenizer split the probe text, and that split
   must equal the split of one of the reference definitions below (the `normalizer`/`pre_tokenizer` blocks of the
   published tokenizer.json files behind each name).

Neither → ConfigError: writing a guessed name would give a file that tokenizes differently from the model's tokenizer.
"""

from __future__ import annotations

import json
from functools import lru_cache
from hashlib import sha256

from ember.errors import ConfigError

# The probe text of llama.cpp's converter, verbatim: the hashes below are of its token ids.
PROBE = (
    "\n \n\n \n\n\n \t \t\t \t\n  \n   \n    \n     \n🚀 (normal) 😶\u200d🌫️ (multiple emojis concatenated) ✅ 🦙🦙 3 33 333 "
    "3333 33333 333333 3333333 33333333 3.3 3..3 3...3 កាន់តែពិសេសអាច😁 ?我想在apple工作1314151天～ ------======= "
    "нещо на Български ''''''```````\"\"\"\"......!!!!!!?????? I've been 'told he's there, 'RE you sure? 'M not "
    "sure I'll make it, 'D you like some tea? We'Ve a'lL"
)

# sha256(str(tokenizer.encode(PROBE))) → llama.cpp's name, for the tokenizers of the families Ember exports.
# Source: llama.cpp convert_hf_to_gguf.py, get_vocab_base_pre (ggml-org/llama.cpp, read at commit 0024aa74),
# where each hash was generated from the hub tokenizer named here.
VOCABULARY_HASHES = {
    # HuggingFaceTB/SmolLM-135M; SmolLM2 shares the vocabulary (the embedded SmolLM2 hashes to it: tested)
    "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249": "smollm",
    "0ef9807a4087ebef797fc749390439009c3b9eda9ad1a097abbe738f486c01e5": "llama-bpe",  # meta-llama/Meta-Llama-3-8B
    "e636dc30a262dcc0d8c323492e32ae2b70728f4df7dfe9737d9f920a282b8aea": "qwen2",  # Qwen/Qwen1.5-7B (Qwen2, 2.5)
    "d4540891389ea895b53b399da6ac824becc30f2fba0e9ddbb98f92e55ca0e97c": "qwen2",  # Qwen/Qwen3-Embedding-0.6B
    "3ce83efda5659b07b1ad37ca97ca5797ea4285d9b9ab0dc679e4a720c9da7454": "gpt-2",  # openai-community/gpt2
}

_GPT2_SPLIT = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_CONTRACTIONS_AND_WORDS = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"
_PUNCTUATION_AND_SPACE = r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"


def _split_then_bytes(pattern: str, trim_offsets: bool) -> dict:
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": trim_offsets, "use_regex": False}]}


# (normalizer, pre_tokenizer) of the published tokenizer.json behind each name.
REFERENCE_SPLITS = {
    "gpt-2": (None, _GPT2_SPLIT),  # openai-community/gpt2
    "smollm": (None, {"type": "Sequence", "pretokenizers": [  # HuggingFaceTB/SmolLM2-135M: single digits first
        {"type": "Digits", "individual_digits": True}, _GPT2_SPLIT]}),
    # meta-llama/Meta-Llama-3-8B: numbers in runs of up to three digits
    "llama-bpe": (None, _split_then_bytes(_CONTRACTIONS_AND_WORDS + r"\p{N}{1,3}" + _PUNCTUATION_AND_SPACE, True)),
    # Qwen/Qwen2-0.5B: NFC, then single digits
    "qwen2": ({"type": "NFC"}, _split_then_bytes(_CONTRACTIONS_AND_WORDS + r"\p{N}" + _PUNCTUATION_AND_SPACE, False)),
}


def vocabulary_hash(tokenizer) -> str:
    return sha256(str(tokenizer.encode(PROBE)).encode()).hexdigest()


def _split(backend, text: str) -> list[str]:
    if backend.normalizer is not None:
        text = backend.normalizer.normalize_str(text)
    if backend.pre_tokenizer is None:
        return [text]
    return [piece for piece, _ in backend.pre_tokenizer.pre_tokenize_str(text)]


@lru_cache(maxsize=None)
def reference_split(name: str) -> tuple[str, ...]:
    """How the tokenizers behind `name` split the probe text (built from their normalizer/pre_tokenizer alone)."""
    from tokenizers import Tokenizer

    normalizer, pre_tokenizer = REFERENCE_SPLITS[name]
    spec = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer, "post_processor": None, "decoder": None,
            "model": {"type": "BPE", "vocab": {}, "merges": []}}
    return tuple(_split(Tokenizer.from_str(json.dumps(spec)), PROBE))


def identify(tokenizer) -> str:
    """llama.cpp's `tokenizer.ggml.pre` for a fast byte-level BPE tokenizer; ConfigError when it is not known.

    Raises:
        ConfigError: neither the vocabulary hash nor the split of the probe text matches a known pre-tokenizer.
    """
    digest = vocabulary_hash(tokenizer)
    if digest in VOCABULARY_HASHES:
        return VOCABULARY_HASHES[digest]
    split = tuple(_split(tokenizer.backend_tokenizer, PROBE))
    for name in REFERENCE_SPLITS:
        if split == reference_split(name):
            return name
    raise ConfigError(
        f"GGUF export: llama.cpp would not know how this tokenizer splits text before BPE (vocabulary hash {digest} "
        f"is not one of {sorted(set(VOCABULARY_HASHES.values()))}, and its pre-tokenizer splits differently from "
        f"each of {sorted(REFERENCE_SPLITS)}), so any tokenizer.ggml.pre Ember wrote could tokenize differently from "
        "the model's tokenizer. Export with --format hf and convert with llama.cpp's convert_hf_to_gguf.py once it "
        "knows this tokenizer"
    )
