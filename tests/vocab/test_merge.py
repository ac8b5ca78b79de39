"""Merging pieces into byte-level (SmolLM2) and SentencePiece-style (Llama-2-like) BPE tokenizers."""

from __future__ import annotations

import json

import pytest

from ember.errors import ConfigError
from ember.vocab.merge import BpeSplitter, extend_tokenizer_json
from ember.vocab.spaces import BYTE_LEVEL, METASPACE, detect_space


@pytest.fixture(scope="module", params=["byte_level", "llama3_style", "sentencepiece", "sentencepiece_legacy"])
def case(request, tmp_path_factory):
    """(base tokenizer, extended tokenizer, extend summary, merge result) for one tokenizer kind."""
    from transformers import AutoTokenizer

    from ember.vocab.extend import extend_vocab

    if request.param == "byte_level":
        base_dir = request.getfixturevalue("smollm2_dir")
        base_json, pieces = request.getfixturevalue("smol_json"), request.getfixturevalue("smol_pieces")
    elif request.param in ("llama3_style", "sentencepiece_legacy"):
        from ember.vocab.sources import open_tokenizer
        from ember.vocab.train import train_pieces

        base_dir = request.getfixturevalue("llama3_dir" if request.param == "llama3_style" else "sp_legacy_dir")
        base_json = open_tokenizer(base_dir).json
        pieces, _ = train_pieces(request.getfixturevalue("zh_docs"), 656, base=base_json, progress=False)
    else:
        base_dir = request.getfixturevalue("sp_dir")
        base_json, pieces = request.getfixturevalue("sp_json"), request.getfixturevalue("sp_pieces")
    out = tmp_path_factory.mktemp(request.param)
    summary = extend_vocab(base_dir, pieces, out, tokenizer_only=True, progress=False)
    result = extend_tokenizer_json(base_json, pieces)
    return AutoTokenizer.from_pretrained(base_dir), AutoTokenizer.from_pretrained(out), summary, result


def test_detects_both_spellings(smol_json, sp_json):
    assert detect_space(smol_json).kind == BYTE_LEVEL
    assert detect_space(sp_json).kind == METASPACE


def test_old_ids_unchanged_new_ids_appended(case):
    base, new, summary, result = case
    old_vocab, new_vocab = base.get_vocab(), new.get_vocab()
    assert all(new_vocab[token] == i for token, i in old_vocab.items())  # the whole base vocabulary
    added_ids = sorted(i for t, i in new_vocab.items() if t not in old_vocab)
    assert added_ids == list(range(len(base), len(base) + summary.new_tokens))
    assert summary.new_tokens == result.new_tokens > 0
    assert len(new) == len(base) + summary.new_tokens
    assert summary.first_new_id == len(base)


def test_only_vocab_and_merges_change(case):
    base, new, _, _ = case
    old_spec, new_spec = json.loads(base.backend_tokenizer.to_str()), json.loads(new.backend_tokenizer.to_str())
    for key in ("normalizer", "pre_tokenizer", "decoder", "post_processor", "added_tokens"):
        assert new_spec[key] == old_spec[key], key
    old_merges = old_spec["model"]["merges"]
    assert new_spec["model"]["merges"][: len(old_merges)] == old_merges
    assert len(new.added_tokens_decoder) == len(base.added_tokens_decoder)  # not "added tokens"


def test_every_new_token_is_reachable(case):
    _, new, _, result = case
    model = new.backend_tokenizer.model
    for token_id, symbol in result.added:
        assert [(t.id, t.value) for t in model.tokenize(symbol)] == [(token_id, symbol)]


@pytest.mark.parametrize("text", ["北京是中国的首都", "我们一起去图书馆学习。"])
def test_ordinary_encode_produces_new_tokens(case, text):
    base, new, _, _ = case
    old_ids = base(text, add_special_tokens=False).input_ids
    new_ids = new(text, add_special_tokens=False).input_ids
    assert any(i >= len(base) for i in new_ids)
    assert len(new_ids) < len(old_ids)


def test_decode_round_trips_exactly(case, zh_docs, roundtrip_docs):
    base, new, _, _ = case
    byte_level = detect_space(json.loads(base.backend_tokenizer.to_str())).kind == BYTE_LEVEL
    for doc in zh_docs + roundtrip_docs:
        decoded = new.decode(new(doc, add_special_tokens=False).input_ids)
        assert decoded == base.decode(base(doc, add_special_tokens=False).input_ids)
        # Newer Llama-2-style tokenizers (Metaspace prepend "first") drop a leading space, base and extension alike.
        assert decoded == doc or (not byte_level and doc.startswith(" ") and decoded == doc[1:])


def test_max_new_takes_the_first_pieces(smol_json, smol_pieces):
    full = extend_tokenizer_json(smol_json, smol_pieces)
    capped = extend_tokenizer_json(smol_json, smol_pieces, max_new=10)
    assert capped.new_tokens == 10
    assert capped.added == full.added[:10]
    assert len(capped.tokenizer_json["model"]["merges"]) == len(smol_json["model"]["merges"]) + 10


def test_unusable_pieces_are_skipped_with_a_reason(smol_json, sp_json):
    tool = {**smol_json["added_tokens"][0], "id": 49152, "content": "<tool>"}  # an added token outside the vocab
    base = {**smol_json, "added_tokens": smol_json["added_tokens"] + [tool]}
    pieces = ["中国，人民".encode(), "the".encode(), " world".encode(), "<tool>".encode()]
    result = extend_tokenizer_json(base, pieces, keep_ascii=True)
    assert result.new_tokens == 0
    assert result.skipped == {
        "crosses a pre-token boundary of the base": 1,
        "already in the base": 2,
        "equals an added/special token": 1,
    }
    partial = extend_tokenizer_json(sp_json, [b"\xe4\xb8", "中".encode()])
    assert [s for _, s in partial.added] == ["中"]
    assert sum(partial.skipped.values()) == 1


def test_splitter_matches_tokenizers_bpe(smol_tokenizer, smol_json):
    from ember.vocab.spaces import byte_to_symbol

    model = smol_json["model"]
    splitter = BpeSplitter(dict(model["vocab"]), [tuple(m) for m in model["merges"]])
    for word in ["tokenization", " unbelievable", "中华人民共和国", "ééé", " aaaaaa", "12345"]:
        symbol = "".join(byte_to_symbol()[b] for b in word.encode())
        expected = [t.value for t in smol_tokenizer.backend_tokenizer.model.tokenize(symbol)]
        assert splitter.split(symbol) == expected


def test_rejects_non_bpe_tokenizers(smol_json):
    wordpiece = {**smol_json, "model": {"type": "WordPiece", "vocab": {}}}
    with pytest.raises(ConfigError, match="not BPE"):
        extend_tokenizer_json(wordpiece, [b"x"])
    with pytest.raises(ConfigError, match="--max-new 0"):
        extend_tokenizer_json(smol_json, [b"x"], max_new=0)


def test_ascii_text_tokenizes_exactly_as_before(case, en_docs):
    base, new, _, _ = case
    for doc in en_docs + ["In 2024, 12345 apples cost $6.78 (about 50%)."]:
        assert new(doc, add_special_tokens=False).input_ids == base(doc, add_special_tokens=False).input_ids


def test_pure_ascii_pieces_only_with_keep_ascii(smol_json):
    pieces = [b"12", " qz".encode()]
    skipped = extend_tokenizer_json(smol_json, pieces)
    assert skipped.new_tokens == 0 and skipped.skipped == {"pure ASCII (kept only with keep_ascii)": 2}
    kept = extend_tokenizer_json(smol_json, pieces, keep_ascii=True)
    assert [s for _, s in kept.added] == ["12", "Ġqz"]
    assert kept.tokenizer_json["model"]["merges"][-2:] == [["1", "2"], ["Ġq", "z"]]
