"""GSM8K: final-number extraction and exact-match scoring with an injected generate function."""

from __future__ import annotations

import pytest

from ember.evaluation.gsm8k import extract_number, load_gsm8k, normalize_number, run_gsm8k, score_gsm8k


@pytest.mark.parametrize("text, expected", [
    ("She makes 9 * 2 = $<<9*2=18>>18 every day.\n#### 18", "18"),
    ("#### 1,000", "1000"),
    ("So the total is 5 + 7 = 12 apples. The answer is 12.", "12"),
    ("The answer is $1,234.50.", "1234.5"),
    ("The answer is: -3", "-3"),
    ("first 3, then 4.5, finally 10.0", "10"),
    ("答案是 42。", "42"),
    ("答案：7", "7"),
    ("There were 20 eggs; the answer is 15, not 20.", "15"),
    ("no digits at all", None),
    ("It costs $ 30.", "30"),
    ("0.50 dollars", "0.5"),
])
def test_extract_number(text, expected):
    assert extract_number(text) == expected


def test_normalize_number():
    assert normalize_number("1,000.00") == normalize_number("1000") == "1000"
    assert normalize_number("abc") is None


def test_score_and_run_with_fixed_answers(tmp_path):
    rows = [{"question": "q1", "answer": "... #### 18"}, {"question": "q2", "answer": "#### 3"},
            {"question": "q3", "answer": "#### 1,200"}]
    outputs = ["9 * 2 = 18. The answer is 18.", "The answer is 4.", "That is 1200 dollars"]
    scores, items = score_gsm8k(rows, outputs)
    assert scores == {"gsm8k/accuracy": pytest.approx(100 * 2 / 3, abs=1e-3), "gsm8k/n": 3}
    assert [i["correct"] for i in items] == [True, False, True]
    assert items[1]["prediction"] == "4" and items[1]["gold"] == "3"

    seen = []

    def generate(batch):
        seen.append(len(batch))
        return [outputs[int(conv[0]["content"][-1]) - 1] for conv in batch]

    run_scores, run_items = run_gsm8k(rows, generate, batch_size=2, progress=False)
    assert seen == [2, 1]
    assert run_scores == scores and [i["output"] for i in run_items] == outputs


def test_real_file_golds(shared_data):
    rows = load_gsm8k(shared_data / "eval" / "gsm8k" / "test.jsonl", limit=3)
    assert [extract_number(r["answer"]) for r in rows] == ["18", "3", "70000"]
