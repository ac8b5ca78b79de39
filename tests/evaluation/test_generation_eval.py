"""`ember eval gen`: dataset field detection, choice accuracy, scoring a predictions file, generating with a stub."""

from __future__ import annotations

import json

import pytest

from ember.cli import main
from ember.errors import DataError
from ember.evaluation.generation_eval import (generate_predictions, load_gen_dataset, named_choices,
                                              score_predictions)
from ember.evaluation.text_metrics import text_scores


def test_named_choices_longest_first():
    choices = ["相关", "不相关"]
    assert named_choices("这两句话不相关", choices) == {"不相关"}
    assert named_choices("相关。", choices) == {"相关"}
    assert named_choices("非上述类型", choices) == set()
    assert named_choices("管状腺瘤，十二指肠交界性肿瘤", ["十二指肠球炎", "管状腺瘤", "十二指肠交界性肿瘤"]) == {"管状腺瘤", "十二指肠交界性肿瘤"}


def test_score_predictions_exact():
    rows = [
        {"id": "1", "prediction": "the cat sat on the mat", "reference": "the cat is on the mat", "group": "en"},
        {"id": "2", "prediction": "不相关", "reference": "不相关", "answer_choices": ["相关", "不相关"], "group": "cls"},
        {"id": "3", "prediction": "这两句相关", "reference": "不相关", "answer_choices": ["相关", "不相关"], "group": "cls"},
    ]
    scores, items = score_predictions(rows)
    first = text_scores(rows[0]["prediction"], rows[0]["reference"])
    assert items[0]["bleu-4"] == pytest.approx(first["bleu-4"], abs=1e-4)
    assert items[1]["bleu-4"] == pytest.approx(100.0)
    assert scores["bleu-4"] == pytest.approx(sum(i["bleu-4"] for i in items) / 3, abs=1e-4)
    assert scores["exact_match"] == pytest.approx(100 / 3, abs=1e-3)
    assert scores["choice_accuracy"] == 50.0 and scores["n_choice"] == 2 and scores["n"] == 3
    assert [i.get("choice_correct") for i in items] == [None, True, False]
    assert scores["categories"]["cls"]["n"] == 2 and scores["categories"]["en"]["rouge-2"] == pytest.approx(60.0)


def test_promptcblue_fields(shared_data):
    rows = load_gen_dataset(str(shared_data / "sft" / "promptcblue" / "dev.json"), limit=80)
    assert len(rows) == 80
    assert rows[0]["prompt"].startswith("自动生成问诊对话中的医生下一句回复") and rows[0]["group"] == "response_generation"
    assert sum(r["answer_choices"] is not None for r in rows) == 65  # 15 of 80 records have no choices


def test_alpaca_fields_and_missing_reference(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"instruction": "翻译", "input": "hello", "output": "你好"}]), encoding="utf-8")
    (row,) = load_gen_dataset(str(path))
    assert row["prompt"] == "翻译\nhello" and row["reference"] == "你好"
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"text": "x"}) + "\n", encoding="utf-8")
    with pytest.raises(Exception, match="--prompt-field"):
        load_gen_dataset(str(bad))


def test_generate_with_stub():
    rows = [{"id": "1", "prompt": "p1", "reference": "r"}, {"id": "2", "prompt": "p2", "reference": "r"}]
    out = generate_predictions(rows, lambda batch: [c[0]["content"].upper() for c in batch], batch_size=1, progress=False)
    assert [r["prediction"] for r in out] == ["P1", "P2"]


def test_cli_scores_a_predictions_file(tmp_path, capsys):
    preds = tmp_path / "preds.jsonl"
    preds.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in [
        {"prediction": "我爱北京", "reference": "我爱北京天安门"},
        {"prediction": "the cat sat on the mat", "reference": "the cat is on the mat"},
    ]) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["eval", "gen", "--predictions", str(preds), "--out", str(out)]) == 0
    scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert scores["bleu-4"] == pytest.approx((71.6531 + 48.5492) / 2, abs=1e-3)
    assert scores["rouge-1"] == pytest.approx((100 * 6 / 7 + 100 * 5 / 6) / 2, abs=1e-3)
    assert scores["meta"]["kind"] == "gen" and scores["n"] == 2
    items = [json.loads(x) for x in (out / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [i["rouge-2"] for i in items] == [80.0, 60.0]
    assert main(["eval", "gen", "--out", str(out)]) == 2  # neither --data nor --predictions: a readable error
    assert "either --data" in capsys.readouterr().err


def test_a_predictions_file_is_read_and_checked_as_data_files_are(tmp_path, capsys):
    """A non-UTF-8 line once gave a UnicodeDecodeError traceback under --predictions, a clean file:line under --data."""
    from ember.evaluation.generation_eval import load_predictions

    preds = tmp_path / "preds.jsonl"
    preds.write_bytes(b'{"prompt": "q", "prediction": "p", "reference": "r"}\n'
                      b'{"prompt": "q", "prediction": "caf\xe9", "reference": "r"}\n')  # Latin-1, as some editors save
    expected = f"{preds}:2: not valid UTF-8 (byte 0xe9 at column 35): re-save the file as UTF-8"
    assert main(["eval", "gen", "--predictions", str(preds), "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"error: {expected}\n"
    with pytest.raises(DataError) as by_data:
        load_gen_dataset(str(preds))
    assert str(by_data.value) == expected  # the --data path says the same

    preds.write_text("\n" + json.dumps({"prediction": "p"}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"^.*preds.jsonl:2: a predictions record needs 'prediction' and 'reference'; "
                                        r"missing \['reference'\]$"):
        load_predictions(str(preds))  # the line number counts the blank line


def test_max_new_tokens_is_checked_as_chat_checks_it(tmp_path, capsys):
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "q", "reference": "r"}) + "\n", encoding="utf-8")
    assert main(["eval", "gen", "--model", "unused", "--data", str(data), "--max-new-tokens", "0",
                 "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == ("error: --max-new-tokens 0 is out of range: use a value of at least 1 and at "
                                       "most 2147483647\n")


def test_conversation_records_give_their_context_and_last_answer(tmp_path):
    path = tmp_path / "conv.jsonl"
    records = [
        {"messages": [{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                      {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                      {"role": "assistant", "content": "a2"}], "category": "chat"},
        {"conversations": [{"from": "human", "value": "你好"}, {"from": "gpt", "value": "你好！"}]},
        {"conversation": [{"human": "1+1?", "assistant": "2"}]},
    ]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    rows = load_gen_dataset(str(path))
    assert [(r["prompt"], r["reference"], r["group"]) for r in rows] == [
        ("q2", "a2", "chat"), ("你好", "你好！", None), ("1+1?", "2", None)]
    seen = []
    generate_predictions(rows[:1], lambda batch: seen.extend(batch) or ["x"] * len(batch), progress=False)
    assert seen == [[{"role": "system", "content": "S"}, {"role": "user", "content": "q1"},
                     {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]]

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"messages": [{"role": "user", "content": "q"}]}) + "\n", encoding="utf-8")
    with pytest.raises(Exception, match=r"bad.jsonl:1: field 'messages': no assistant message"):
        load_gen_dataset(str(bad))


def test_a_none_of_these_reference_needs_the_same_answer_not_just_no_choice():
    choices = ["相关", "不相关"]
    rows = [{"prediction": "非上述类型", "reference": "非上述类型", "answer_choices": choices},
            {"prediction": "asdkjh ###", "reference": "非上述类型", "answer_choices": choices},   # gibberish names none
            {"prediction": "", "reference": "非上述类型", "answer_choices": choices},
            {"prediction": "相关", "reference": "非上述类型", "answer_choices": choices}]
    _, items = score_predictions(rows)
    assert [i["choice_correct"] for i in items] == [True, False, False, False]


def test_moss_records_are_read_like_training_reads_them(tmp_path):
    record = {"conversation_id": "1", "meta_instruction": "You are MOSS.", "num_turns": 2, "category": "honest",
              "chat": {"turn_1": {"Human": "<|Human|>: 你好<eoh>\n", "MOSS": "<|MOSS|>: 你好！<eom>\n"},
                       "turn_2": {"Human": "<|Human|>: 你是谁<eoh>\n", "MOSS": "<|MOSS|>: 我是MOSS。<eom>\n"}}}
    path = tmp_path / "moss.jsonl"
    path.write_text(json.dumps(record, ensure_ascii=False) + "\n", encoding="utf-8")
    (row,) = load_gen_dataset(str(path))
    assert row["reference"] == "我是MOSS。" and row["prompt"] == "你是谁"
    assert [m["role"] for m in row["messages"]] == ["system", "user", "assistant", "user"]


def test_limit_draws_across_categories_with_a_seed():
    from ember.evaluation.runs import sample_across

    rows = [{"id": i, "category": c} for i, c in enumerate(["math"] * 10 + ["code"] * 10 + ["poem"] * 10)]
    picked = sample_across(rows, 6, seed=0, key="category")
    assert sorted(r["category"] for r in picked) == ["code", "code", "math", "math", "poem", "poem"]
    assert [r["id"] for r in picked] == sorted(r["id"] for r in picked)  # file order kept
    assert picked == sample_across(rows, 6, seed=0, key="category")
    assert picked != sample_across(rows, 6, seed=1, key="category")
    assert sample_across(rows, None, 0, "category") == rows


def test_items_are_written_as_utf8(tmp_path):
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"prediction": "我爱北京", "reference": "北京"}, ensure_ascii=False) + "\n", encoding="utf-8")
    assert main(["eval", "gen", "--predictions", str(preds), "--out", str(tmp_path / "run")]) == 0
    text = (tmp_path / "run" / "items.jsonl").read_text(encoding="utf-8")
    assert "我爱北京" in text and "\\u" not in text


def test_history_max_tokens_drops_the_oldest_rounds_first(tiny_engine):
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(6):
        messages += [{"role": "user", "content": f"Question number {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]
    messages.append({"role": "user", "content": "Last question?"})
    full = len(tiny_engine.prompt_ids(messages))
    kept = tiny_engine.fit_history(messages, full - 1)
    assert [m.content for m in kept] == [m["content"] for m in messages[:1] + messages[3:]]  # one round dropped
    assert len(tiny_engine.prompt_ids(kept)) <= full - 1
    assert [m.content for m in tiny_engine.fit_history(messages, 1)] == ["Be brief.", "Last question?"]
    assert len(tiny_engine.fit_history(messages, None)) == len(messages)
