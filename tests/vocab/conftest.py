"""Small corpora and tokenizers for the vocabulary tests: the real SmolLM2 tokenizer (byte-level BPE) and a tiny
SentencePiece BPE with byte fallback, trained here and converted to `tokenizers` (Llama-2 style)."""

from __future__ import annotations

import pytest

ZH_LINES = [
    "我们今天去北京大学参观图书馆。",
    "北京是中国的首都，也是一座历史悠久的城市。",
    "人工智能正在改变我们的生活和工作方式。",
    "今天天气很好，我们一起去公园散步吧。",
    "中国的传统文化博大精深，值得我们学习。",
    "学生们在图书馆里认真学习，准备期末考试。",
    "这家餐厅的菜很好吃，价格也不贵。",
    "科学技术的发展让世界变得越来越小。",
    "他每天早上六点起床，然后去公园跑步。",
    "春天来了，公园里的花都开了。",
]
MIXED_LINES = [
    "Hello 世界! Tokenizers 把文本切成 tokens 😀。",
    "数字 2024 年，English words mixed 在一起。",
    "生僻字：龘靐齉，还有繁體字「學習」。",
    "  两个空格\t制表符\n换行之后 trailing space ",
]
EN_LINES = [
    "The quick brown fox jumps over the lazy dog.",
    "A tokenizer splits text into pieces that a language model reads.",
    "Byte fallback turns unknown characters into their UTF-8 bytes.",
    "Numbers like 2024 and 42 appear in ordinary English sentences.",
    "Hello world, this is a tiny corpus for testing the vocabulary tools.",
]


@pytest.fixture(scope="session")
def zh_docs() -> list[str]:
    return ZH_LINES * 3 + MIXED_LINES


@pytest.fixture(scope="session")
def en_docs() -> list[str]:
    return list(EN_LINES)


@pytest.fixture(scope="session")
def roundtrip_docs() -> list[str]:
    return ZH_LINES + MIXED_LINES + EN_LINES + ["", " ", "中", "\n\n", "a  b   c", "ｆｕｌｌ　ｗｉｄｔｈ"]


@pytest.fixture(scope="session")
def sp_dir(tmp_path_factory) -> str:
    """A Llama-2-style tokenizer folder: SentencePiece BPE (byte fallback) on English only, so Chinese is bytes."""
    import sentencepiece as spm
    from transformers import LlamaTokenizer

    root = tmp_path_factory.mktemp("sp")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(EN_LINES * 20),
        model_prefix=str(root / "tokenizer"),
        vocab_size=400,
        model_type="bpe",
        byte_fallback=True,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    tok = LlamaTokenizer.from_pretrained(str(root))  # finds tokenizer.model and converts it
    out = root / "hf"
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def smol_json(smol_tokenizer) -> dict:
    import json

    return json.loads(smol_tokenizer.backend_tokenizer.to_str())


@pytest.fixture(scope="session")
def smol_pieces(smol_json, zh_docs) -> list[bytes]:
    from ember.vocab.train import train_pieces

    pieces, _ = train_pieces(zh_docs, vocab_size=256 + 400, base=smol_json, progress=False)
    return pieces


# The split pattern of Llama-3 / Qwen2-style tokenizers (letters, 1-3 digit groups, punctuation runs, spaces).
LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
    r"|\s+(?!\S)|\s+"
)


@pytest.fixture(scope="session")
def llama3_dir(smol_json, tmp_path_factory) -> str:
    """SmolLM2's vocabulary behind a Llama-3/Qwen-style front: NFC, regex Split + ByteLevel, ignore_merges."""
    import json

    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    spec = json.loads(json.dumps(smol_json))
    spec["normalizer"] = {"type": "NFC"}
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_SPLIT}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False},
    ]}
    spec["model"]["ignore_merges"] = True
    out = tmp_path_factory.mktemp("llama3") / "tok"
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec))).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def sp_legacy_dir(sp_dir, tmp_path_factory) -> str:
    """The same tokenizer in the older Llama-2 tokenizer.json layout: "▁" added by the normaliser, no pre-tokenizer."""
    import json

    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    spec = json.loads(AutoTokenizer.from_pretrained(sp_dir).backend_tokenizer.to_str())
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"},
        {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
    ]}
    spec["pre_tokenizer"] = None
    out = tmp_path_factory.mktemp("sp_legacy") / "tok"
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec))).save_pretrained(out)
    return str(out)


@pytest.fixture(scope="session")
def sp_json(sp_dir) -> dict:
    from ember.vocab.sources import open_tokenizer

    return open_tokenizer(sp_dir).json


@pytest.fixture(scope="session")
def sp_pieces(sp_json, zh_docs) -> list[bytes]:
    from ember.vocab.train import train_pieces

    pieces, _ = train_pieces(zh_docs, vocab_size=300, base=sp_json, progress=False)
    return pieces
