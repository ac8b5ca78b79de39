"""Continued pretraining: documents joined with EOS into overlapping blocks; every token is a target exactly once."""

from __future__ import annotations

import pytest

from ember.data.pretrain import blocks, encode_documents, token_stream
from ember.data.render import IGNORE_INDEX
from ember.data.tokenize import encode_plain
from ember.errors import DataError

_ = IGNORE_INDEX
BOS, EOS = 1, 2  # SmolLM2-Instruct: <|im_start|>, <|im_end|>

DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "千里之行，始于足下。",
    "A document that mentions <|im_end|> as text, not as a token.",
    "Short.",
]


def test_blocks_overlap_by_one_token_and_keep_the_remainder():
    stream = list(range(100, 120))  # 20 tokens
    out = blocks(stream, 8, "docs")
    assert [b.input_ids for b in out] == [stream[0:8], stream[7:15], stream[14:20]]
    assert [b.labels for b in out] == [[_] + stream[1:8], [_] + stream[8:15], [_] + stream[15:20]]
    assert [b.source for b in out] == ["docs#block0", "docs#block1", "docs#block2"]
    # exact multiples leave no one-token tail: 15 tokens = 2 blocks of 8 sharing token 7
    assert [b.input_ids for b in blocks(stream[:15], 8)] == [stream[0:8], stream[7:15]]


def test_stream_joins_documents_with_eos(smol_tokenizer):
    stream = token_stream(smol_tokenizer, DOCS + [""])  # an empty document adds nothing
    expected = [BOS]
    for doc in DOCS:
        expected += encode_plain(smol_tokenizer, doc) + [EOS]
    assert stream == expected
    assert stream.count(EOS) == len(DOCS)  # the <|im_end|> written in document 3 stays text


@pytest.mark.parametrize("max_length", [8, 13, 64, 4096])
def test_every_token_is_trained_exactly_once(smol_tokenizer, max_length):
    doc_tokens = sum(len(encode_plain(smol_tokenizer, d)) for d in DOCS)
    out = encode_documents(smol_tokenizer, DOCS, max_length)
    assert all(len(b.input_ids) <= max_length for b in out)
    trained = [label for b in out for label in b.labels if label != IGNORE_INDEX]
    assert len(trained) == doc_tokens + len(DOCS)  # every document token and every EOS, once
    assert trained == token_stream(smol_tokenizer, DOCS)[1:]  # in stream order: none lost, none repeated


def test_pretraining_through_the_pipeline(write, make_config, prepare, smol_tokenizer):
    jsonl = write("docs.jsonl", [{"text": d} for d in DOCS[:2]])
    txt = write("docs.txt", "\n".join(DOCS[2:]) + "\n")
    prepared = prepare(make_config([{"path": str(jsonl)}, {"path": str(txt)}], stage="pt", max_length=16))
    doc_tokens = sum(len(encode_plain(smol_tokenizer, d)) for d in DOCS)
    report = prepared.data.report
    assert (report.read, report.kept) == (4, len(prepared.data.train))
    assert report.trained_tokens == doc_tokens + len(DOCS)
    assert [b.input_ids for b in prepared.data.train] == [b.input_ids for b in encode_documents(smol_tokenizer, DOCS, 16)]


def test_pretraining_rejects_dialogue_data(write, make_config, prepare):
    path = write("chat.jsonl", [{"instruction": "q", "input": "", "output": "a"}])
    with pytest.raises(DataError) as info:
        prepare(make_config([{"path": str(path)}], stage="pt"))
    assert str(info.value) == f"{path}:1: stage pt reads raw text ({{text}} records or .txt), but this is 'alpaca' data"


def test_fine_tuning_rejects_raw_text(write, make_config, prepare):
    path = write("docs.jsonl", [{"text": "just text"}])
    with pytest.raises(DataError) as info:
        prepare(make_config([{"path": str(path)}]))
    assert str(info.value) == f"{path}:1: raw text ({{text}}) has no dialogue to fine-tune on; use stage: pt"
