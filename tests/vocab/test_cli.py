"""`ember vocab train | extend | stats` end to end on a tiny SentencePiece-style tokenizer, and the error messages."""

from __future__ import annotations

import json

import pytest

from ember.cli import main


def _corpus(tmp_path, docs):
    path = tmp_path / "zh.jsonl"
    path.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return str(path)


def test_train_extend_stats(tmp_path, sp_dir, zh_docs, capsys):
    corpus = _corpus(tmp_path, zh_docs)
    pieces, out = tmp_path / "pieces", tmp_path / "ext"
    assert main(["vocab", "train", "--corpus", corpus, "--vocab-size", "300", "--out", str(pieces), "--base", sp_dir]) == 0
    meta = json.loads((pieces / "meta.json").read_text())
    assert meta["kind"] == "metaspace" and meta["documents"] == len(zh_docs)
    assert 100 < meta["pieces"] == len((pieces / "pieces.jsonl").read_text().splitlines()) <= 300
    assert main(["vocab", "extend", "--base", sp_dir, "--pieces", str(pieces), "--out", str(out), "--max-new", "100"]) == 0
    record = json.loads((out / "ember_vocab.json").read_text())
    assert record["new_tokens"] == 100 and record["padded_vocab"] == 512 and record["model"] is None
    assert not (out / "model.safetensors").exists()
    capsys.readouterr()
    report = tmp_path / "stats.json"
    assert main(["vocab", "stats", "--tokenizer", sp_dir, "--tokenizer", str(out), "--corpus", corpus,
                 "--repeats", "1", "--json", str(report)]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("tokenizer")
    rows = json.loads(report.read_text())["tokenizers"]
    assert [r["vocab_size"] for r in rows] == [400, 500]
    assert rows[1]["reduction"] > 0.3 and rows[1]["byte_share"] < rows[0]["byte_share"]


def test_generic_byte_level_training(tmp_path, zh_docs):
    pieces = tmp_path / "pieces"
    assert main(["vocab", "train", "--corpus", _corpus(tmp_path, zh_docs), "--vocab-size", "300", "--out", str(pieces)]) == 0
    assert json.loads((pieces / "meta.json").read_text())["kind"] == "byte_level"
    assert len((pieces / "pieces.jsonl").read_text().splitlines()) == 300 - 256


@pytest.mark.parametrize(
    "args, message",
    [
        (["train", "--corpus", "{tmp}/nope.txt", "--vocab-size", "300", "--out", "{tmp}/p"], "nope.txt: file not found"),
        (["train", "--corpus", "{corpus}", "--vocab-size", "100", "--out", "{tmp}/p"],
         "--vocab-size 100: must be above 256"),
        (["train", "--corpus", "{corpus}", "--vocab-size", "300", "--out", "{corpus}"], "is a file; give a folder"),
        (["train", "--corpus", "{corpus}", "--vocab-size", "300", "--out", "{tmp}/p", "--base", "{tmp}"],
         "holds no tokenizer"),
        (["extend", "--base", "{sp}", "--pieces", "{tmp}", "--out", "{tmp}/e"], "no pieces.jsonl there"),
        (["extend", "--base", "{sp}", "--pieces", "{pieces}", "--out", "{tmp}/e", "--max-new", "0"],
         "--max-new 0: must be at least 1"),
        (["extend", "--base", "no-such-model", "--pieces", "{pieces}", "--out", "{tmp}/e"],
         "model 'no-such-model' is not a local path"),
        (["stats", "--tokenizer", "{sp}", "--corpus", "{corpus}", "--repeats", "0"], "--repeats 0: must be at least 1"),
    ],
)
def test_errors_are_one_line_messages(args, message, tmp_path, sp_dir, capsys):
    from ember.vocab.pieces import save_pieces

    corpus = _corpus(tmp_path, ["中文"])
    save_pieces(tmp_path / "pieces", ["中文".encode()], {})
    fill = {"tmp": str(tmp_path), "corpus": corpus, "sp": sp_dir, "pieces": str(tmp_path / "pieces")}
    assert main(["vocab", *[a.format(**fill) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
