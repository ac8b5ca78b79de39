"""`tokenizer.ggml.pre`: the name llama.cpp's converter would choose (vocabulary hash of the probe text's ids), or,
for a trained/extended vocabulary, the reference pre-tokenizer that splits the probe text the same way; anything
else is refused before a file is written."""

from __future__ import annotations

import pytest

from .conftest import small_tokenizer, tiny_llama


def test_reference_splits_tell_the_names_apart():
    from ember.export.pretokenizer import REFERENCE_SPLITS, reference_split

    splits = {name: reference_split(name) for name in REFERENCE_SPLITS}
    assert len(set(splits.values())) == len(splits) == 4
    assert {"".join(s) for s in splits.values()} == {"".join(splits["gpt-2"])}  # the same text, cut differently
    assert "Ġ333" in splits["gpt-2"] and "333" in splits["llama-bpe"] and "33" not in splits["qwen2"]
    assert "33" not in splits["smollm"]


@pytest.mark.parametrize("name", ["llama-bpe", "qwen2"])
def test_reference_splits_equal_the_splits_transformers_reads_for_the_name(name):
    """An independent reading of the same names: transformers' GGUF loader maps llama-bpe / qwen2 to split regexes."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS

    from ember.export.pretokenizer import PROBE, reference_split

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(GGUF_PRE_TOKENIZER_SPLITS[name]), "isolated"),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    text = normalizers.NFC().normalize_str(PROBE) if name == "qwen2" else PROBE
    assert tuple(piece for piece, _ in tok.pre_tokenizer.pre_tokenize_str(text)) == reference_split(name)


@pytest.mark.smollm2
def test_embedded_smollm2_is_identified_by_its_vocabulary_hash_as_the_converter_does(smol_tokenizer):
    from ember.export.pretokenizer import VOCABULARY_HASHES, identify, reference_split, vocabulary_hash

    digest = vocabulary_hash(smol_tokenizer)
    assert digest == "855059429035d75a914d1eda9f10a876752e281a054a7a3d421ef0533e5b6249"
    assert VOCABULARY_HASHES[digest] == identify(smol_tokenizer) == "smollm"
    # Its tokenizer.json (rebuilt from the GGUF) lacks SmolLM's digit splitter, yet it encodes digits one by one
    # (no digit merges in the vocabulary): the ids, which the hash sees, are SmolLM's.
    assert "".join(reference_split("smollm")) == "".join(reference_split("gpt-2"))
    assert smol_tokenizer.tokenize(" 3333") == ["Ġ", "3", "3", "3", "3"]


@pytest.mark.parametrize("name", ["gpt-2", "smollm", "llama-bpe", "qwen2"])
def test_trained_vocabularies_are_identified_by_their_split(name):
    from ember.export.pretokenizer import VOCABULARY_HASHES, identify, vocabulary_hash

    tok = small_tokenizer(name)
    assert vocabulary_hash(tok) not in VOCABULARY_HASHES  # the converter would refuse it
    assert identify(tok) == name


def test_an_unknown_pre_tokenizer_is_refused_and_no_file_is_written(tmp_path):
    from tokenizers import pre_tokenizers

    from ember.errors import ConfigError
    from ember.export.merge import export
    from ember.export.pretokenizer import identify

    tok = small_tokenizer()
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)  # " Hello" ≠ "Hello"
    with pytest.raises(ConfigError, match=r"llama.cpp would not know .*vocabulary hash [0-9a-f]{64}.*--format hf"):
        identify(tok)
    tiny_llama(len(tok)).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    with pytest.raises(ConfigError, match="llama.cpp would not know"):
        export(str(tmp_path / "base"), str(tmp_path / "m.gguf"), fmt="gguf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]
