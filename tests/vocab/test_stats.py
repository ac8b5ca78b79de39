"""Stats on hand-built tokenizers over a corpus whose counts are worked out by hand."""

from __future__ import annotations

import json

import pytest

from ember.vocab.stats import compare_tokenizers, format_table, stats_json

BYTES = {f"<0x{b:02X}>": b for b in range(256)}


def _metaspace(merges: list[tuple[str, str]], byte_fallback: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, **{tok: 1 + b for tok, b in BYTES.items()}}
    for symbol in ["▁", "a", "b", *(l + r for l, r in merges)]:
        vocab.setdefault(symbol, len(vocab))
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", byte_fallback=byte_fallback, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    tok.decoder = decoders.Metaspace()
    return tok


def _byte_level(merges: list[tuple[str, str]]):
    from tokenizers import Tokenizer, models, pre_tokenizers

    from ember.vocab.spaces import byte_to_symbol

    vocab = {s: i for i, s in enumerate(byte_to_symbol().values())}
    for left, right in merges:
        vocab[left + right] = len(vocab)
    tok = Tokenizer(models.BPE(vocab, merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    return tok


def test_hand_computed_counts():
    # "ab ab" -> ▁ab▁ab ; "ba中" -> ▁ba中, and 中 = E4 B8 AD is byte fallback (or unknown) everywhere.
    docs = ["ab ab", "ba中"]
    chars_only = _metaspace([])  # ▁ a b ▁ a b | ▁ b a <E4> <B8> <AD>           = 12 tokens, 3 bytes
    merged = _metaspace([("a", "b"), ("▁", "ab")])  # ▁ab ▁ab | ▁ b a <E4> <B8> <AD> = 8 tokens, 3 bytes
    no_fallback = _metaspace([("a", "b"), ("▁", "ab")], byte_fallback=False)  # ... | ▁ b a <unk> = 6, 1 unk
    rows = compare_tokenizers([("chars", chars_only), ("merged", merged), ("unk", no_fallback)], docs, repeats=2)
    got = [(r.name, r.characters, r.tokens, r.byte_tokens, r.unknown_tokens) for r in rows]
    assert got == [("chars", 8, 12, 3, 0), ("merged", 8, 8, 3, 0), ("unk", 8, 6, 0, 1)]
    assert [r.tokens_per_char for r in rows] == [1.5, 1.0, 0.75]
    assert [r.reduction for r in rows] == [0.0, 1 - 8 / 12, 0.5]
    assert [r.byte_share for r in rows] == [0.25, 3 / 8, 0.0]
    assert [r.unknown_share for r in rows] == [0.0, 0.0, 1 / 6]
    assert rows[0].speed_ratio == 1.0 and all(r.chars_per_second > 0 for r in rows)


def test_byte_level_partial_tokens_count_as_bytes():
    # "a 中" -> "a" | "Ġä¸Ń"; with the merge (ä, ¸): a, Ġ, ä¸, Ń — the last two are parts of one character.
    rows = compare_tokenizers([("bytes", _byte_level([])), ("merged", _byte_level([("ä", "¸")]))], ["a 中"])
    assert [(r.tokens, r.byte_tokens) for r in rows] == [(5, 3), (4, 2)]
    assert rows[1].byte_share == 0.5 and rows[1].reduction == pytest.approx(0.2)


def test_table_and_json():
    rows = compare_tokenizers([("chars", _metaspace([])), ("merged", _metaspace([("a", "b")]))], ["ab"], repeats=1)
    table = format_table(rows)
    assert table.splitlines()[0].split() == ["tokenizer", "vocab", "tokens", "tok/char", "reduction", "unk", "bytes",
                                             "chars/s", "speed"]
    assert "+33.33%" in table  # ▁ a b (3) -> ▁ ab (2)
    data = json.loads(json.dumps(stats_json(rows)))
    assert data["reference"] == "chars"
    assert [t["tokens"] for t in data["tokenizers"]] == [3, 2]
