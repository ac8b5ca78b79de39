"""`ember data preview` and `ember data export`: output, overrides, and one-line errors (exit 2, no traceback)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ember.cli import main
from ember.data.conversation import Conversation, Message

ROOT = Path(__file__).resolve().parents[2]

CHATS = [
    [("user", "Hi"), ("assistant", "Hello there")],
    [("system", "Be brief."), ("user", "One?"), ("assistant", "1."), ("user", "Two?"), ("assistant", "2.")],
]


@pytest.fixture
def config_file(tmp_path, write, smollm2_dir):
    """config_file(lines=...) -> a run config over a small chat file (bytes lines are written verbatim)."""

    def make(lines=None, **data) -> Path:
        lines = lines if lines is not None else [{"messages": [{"role": r, "content": c} for r, c in chat]} for chat in CHATS]
        body = b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines)
        path = write("chat.jsonl", body)
        cfg = {
            "stage": "sft",
            "model": {"name_or_path": "smollm2-135m-instruct"},
            "data": {"datasets": [{"path": str(path)}], "shuffle": False, "cache_dir": str(tmp_path / "cache"), **data},
        }
        out = tmp_path / "run.yaml"
        out.write_text(yaml.safe_dump(cfg), encoding="utf-8")
        return out

    return make


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_preview_marks_trained_spans_and_prints_the_summary(capsys, config_file):
    code, out, err = _run(capsys, "data", "preview", str(config_file()), "--n", "2")
    assert (code, err) == (0, "")
    assert "<|im_start|>assistant\n[[Hello there<|im_end|>]]\n" in out  # plain markers: the output is not a terminal
    assert "<|im_start|>assistant\n[[1.<|im_end|>]]\n<|im_start|>user\nTwo?<|im_end|>\n<|im_start|>assistant\n[[2.<|im_end|>]]" in out
    assert "(trained spans are marked [[ … ]])" in out
    for label, value in [("records read", "2"), ("samples kept", "2 (train 2, eval 0)"), ("skipped (bad records)", "0"),
                         ("dropped: too long", "0"), ("truncated", "0"), ("turns dropped by truncation", "0")]:
        assert re.search(rf"│ {re.escape(label)}\s+│ {re.escape(value)}\s+│", out), label
    assert "\x1b[" not in out  # no colour codes when piped
    code, out, _ = _run(capsys, "data", "preview", str(config_file()))
    assert code == 0 and "(loaded from the processed-data cache)" in out


def test_preview_lists_skipped_records(capsys, config_file):
    cfg = config_file([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"}]},
                       b'{"messages": [{"role": "user"',
                       {"messages": [{"role": "user", "content": "Hi"}, {"role": "user", "content": "Again"}]}])
    code, out, err = _run(capsys, "data", "preview", str(cfg), "data.on_error=skip")
    data = cfg.parent / "chat.jsonl"
    assert (code, err) == (0, "")
    assert f"skipped {data}:2: invalid JSON: Expecting ',' delimiter (column 30)\n" in out
    assert f"skipped {data}:3: wrong role order: two user messages in a row\n" in out
    assert re.search(r"│ skipped \(bad records\)\s+│ 2 — \{'invalid JSON': 1, 'wrong role order': 1\}", out)


def test_export_writes_what_the_renderer_encodes(capsys, config_file, tmp_path, renderer):
    out_file = tmp_path / "out" / "samples.jsonl"
    code, out, err = _run(capsys, "data", "export", str(config_file()), "--out", str(out_file))
    assert (code, err, out) == (0, "", f"wrote 2 samples to {out_file} (data report: {out_file}.report.json)\n")
    data = tmp_path / "chat.jsonl"
    rows = _rows(out_file)
    assert [(r["source"], r["split"]) for r in rows] == [(f"{data}:1", "train"), (f"{data}:2", "train")]
    for row, chat in zip(rows, CHATS, strict=True):
        enc = renderer.encode(Conversation([Message(r, c) for r, c in chat]))
        assert (row["input_ids"], row["labels"]) == (enc.input_ids, enc.labels)
        assert set(row) == {"source", "split", "input_ids", "labels"}


def test_dotted_overrides(capsys, config_file, tmp_path, renderer):
    out_file = tmp_path / "samples.jsonl"
    cfg = str(config_file())
    # overrides may stand before or after --out
    code, out, _ = _run(capsys, "data", "export", cfg, "data.mask=last_assistant", "--out", str(out_file), "data.eval_split=0.5")
    assert (code, out) == (0, f"wrote 2 samples to {out_file} (data report: {out_file}.report.json)\n")
    rows = _rows(out_file)
    assert [r["split"] for r in rows] == ["train", "eval"]
    by_source = {r["source"].rsplit(":", 1)[1]: r for r in rows}
    enc = renderer.encode(Conversation([Message(r, c) for r, c in CHATS[1]]), "last_assistant")
    assert by_source["2"]["labels"] == enc.labels
    # room for the first sample only: truncation=drop drops the second
    short, long = (len(renderer.encode(Conversation([Message(r, c) for r, c in chat])).input_ids) for chat in CHATS)
    assert short < long
    code, out, _ = _run(capsys, "data", "export", cfg, "--out", str(out_file), f"data.max_length={short}", "data.truncation=drop")
    assert (code, out) == (0, f"dropped 1 record(s) longer than max_length\n  {tmp_path / 'chat.jsonl'}:2: longer than "
                              f"max_length={short}\nrecords: 2 read = 1 kept + 0 skipped + 1 dropped\n"
                              f"wrote 1 samples to {out_file} (data report: {out_file}.report.json)\n")


def test_unknown_config_key_names_the_closest(capsys, config_file):
    cfg = config_file()
    code, out, err = _run(capsys, "data", "export", str(cfg), "--out", "x.jsonl", "data.max_lenght=512")
    assert (code, out) == (2, "")
    assert err == (f"error: data: unknown key 'max_lenght'; did you mean 'max_length'? (in the command-line overrides, "
                   f"not {cfg})\n")


def test_bad_record_is_one_error_line(capsys, config_file):
    cfg = config_file([{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]}])
    code, out, err = _run(capsys, "data", "preview", str(cfg))
    assert (code, out) == (2, "")
    assert err == f"error: {cfg.parent / 'chat.jsonl'}:1: field 'messages[1].content': empty assistant text\n"


def test_missing_data_file(capsys, config_file, tmp_path):
    missing = tmp_path / "nope.jsonl"
    code, _, err = _run(capsys, "data", "preview", str(config_file()), f"data.datasets=[{{path: {missing}}}]")
    assert (code, err) == (2, f"error: {missing}: file not found\n")


def test_real_command_exits_2_without_traceback(config_file, tmp_path):
    """The installed entry point: user mistakes give exit code 2 and one `error:` line, never a traceback."""
    cfg = config_file()
    result = subprocess.run(
        [sys.executable, "-m", "ember", "data", "export", str(cfg), "--out", str(tmp_path / "x.jsonl"), "data.mask=last_asistant"],
        capture_output=True, text=True, cwd=ROOT, timeout=120,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == (
        "error: data.mask: 'last_asistant' is not one of all_assistant, last_assistant, all (did you mean "
        f"'last_assistant'?) (in the command-line overrides, not {cfg})\n"
    )


def test_prepare_builds_the_cache_training_reads_and_finds_it_again(capsys, config_file, tmp_path):
    from ember.config import load_config, validate
    from ember.training.prepare import prepare_data

    cfg = config_file()
    code, out, err = _run(capsys, "data", "prepare", str(cfg))
    assert (code, err) == (0, "")
    entry = Path(out.splitlines()[-1].split(" the processed data in ")[1].split(" (")[0])
    assert entry.parent == tmp_path / "cache" and (entry / "files.json").is_file()
    assert out.splitlines()[0].startswith("2 records read, 2 train / 0 eval samples, ")
    code, out, _ = _run(capsys, "data", "prepare", str(cfg))
    assert code == 0 and out.splitlines()[-1].startswith(f"found the processed data in {entry} ")
    prepared = prepare_data(validate(load_config(str(cfg), [])), progress=False)  # what `ember train` would load
    assert prepared.from_cache and prepared.data.train.paths[0].parent == entry


def test_prepare_refuses_a_config_without_a_cache(capsys, config_file):
    code, out, err = _run(capsys, "data", "prepare", str(config_file(cache=False)))
    assert code == 2 and "data.cache is false, so there is no cache to prepare" in err and "Traceback" not in err
