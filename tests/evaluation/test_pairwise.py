"""Pairwise judging: verdict parsing, position-swap consistency, a fixed set of judge outputs → exact table."""

from __future__ import annotations

import json
import re

import pytest

from ember.cli import main as ember_main
from ember.evaluation.pairwise import (agreement, combine, judge_pairs, judge_prompt, load_prompt_set, load_template,
                                      outcome_table, parse_verdict, rates_line)

# For each item: the judge's verdict with A's answer shown first, then with B's answer shown first.
SCRIPT = {
    "m1": ("1", "2"),     # A better in both orders → win
    "m2": ("1", "1"),     # "whichever is first" → inconsistent → tie
    "m3": ("2", "1"),     # B better in both orders → loss
    "m4": ("TIE", "tie"),  # tie both times → tie
    "m5": ("1", None),    # no verdict in one order → tie
    "w1": ("1", "2"),
    "w2": ("1", "2"),
    "w3": ("2", "1"),
}
ITEMS = [{"id": i, "prompt": f"prompt {i}", "category": "math" if i[0] == "m" else "writing", "reference": None}
         for i in SCRIPT]


def scripted_judge(batch):
    out = []
    for conv in batch:
        text = conv[0]["content"]
        item = re.search(r"\[Prompt\]\nprompt (\w+)", text).group(1)
        a_first = re.search(r"\[Answer 1\]\nanswer-(a|b)", text).group(1) == "a"
        verdict = SCRIPT[item][0 if a_first else 1]
        out.append("I compared them." + (f"\n[[{verdict}]]" if verdict else " Hard to say."))
    return out


def test_parse_and_combine():
    assert parse_verdict("Answer 1 is better.\n[[1]]") == "1"
    assert parse_verdict("The template says [[1]] or [[2]]... final: [[ TIE ]]") == "tie"
    assert parse_verdict("no mark") is None
    assert combine("1", "2") == "win" and combine("2", "1") == "loss" and combine("tie", "tie") == "tie"
    assert combine("1", "1") == combine("2", "2") == "tie"  # position bias: inconsistent
    assert combine("1", "tie") == combine(None, "2") == "tie"


def test_fixed_judge_outputs_give_exact_table():
    answers_a = {it["id"]: f"answer-a {it['id']}" for it in ITEMS}
    answers_b = {it["id"]: f"answer-b {it['id']}" for it in ITEMS}
    records = judge_pairs(ITEMS, answers_a, answers_b, scripted_judge, load_template(), batch_size=3, progress=False)
    assert [r["outcome"] for r in records] == ["win", "tie", "loss", "tie", "tie", "win", "win", "loss"]
    assert [r["consistent"] for r in records] == [True, False, True, True, False, True, True, True]
    assert records[1]["verdicts"] == ["1", "1"]
    table = outcome_table(records)
    assert table == {
        "math": {"win": 1, "tie": 3, "loss": 1, "n": 5, "win_rate": 20.0, "tie_rate": 60.0, "loss_rate": 20.0},
        "writing": {"win": 2, "tie": 0, "loss": 1, "n": 3, "win_rate": 66.67, "tie_rate": 0.0, "loss_rate": 33.33},
        "overall": {"win": 3, "tie": 3, "loss": 2, "n": 8, "win_rate": 37.5, "tie_rate": 37.5, "loss_rate": 25.0},
    }


def test_rates_line_format():
    records = [{"category": "c", "outcome": o} for o in ["win"] * 43 + ["tie"] * 20 + ["loss"] * 2]
    assert rates_line(outcome_table(records)["overall"]) == "66.15% win, 30.77% tie, 3.08% loss"


def test_template_encodes_the_rules(tmp_path):
    text = judge_prompt(load_template(), {"prompt": "1+1=?", "category": "math", "reference": "2"}, "2", "3")
    assert "both answers are right, or both are wrong, the verdict is a tie" in text
    assert "answered in Chinese" in text and "more detailed, truthful and specific" in text
    assert "[Reference answer]\n2" in text and "[Answer 1]\n2" in text and "[Answer 2]\n3" in text
    custom = tmp_path / "judge.txt"
    custom.write_text("Q={{ question }} 1={{ answer_1 }} 2={{ answer_2 }}", encoding="utf-8")
    assert judge_prompt(load_template(str(custom)), {"prompt": "q"}, "x", "y") == "Q=q 1=x 2=y"


def test_agreement_and_kappa():
    judge = [{"id": str(i), "outcome": o} for i, o in enumerate(["win", "win", "tie", "loss"])]
    human = [{"id": "0", "outcome": "win"}, {"id": "1", "outcome": "tie"}, {"id": "2", "outcome": "tie"},
             {"id": "3", "outcome": "loss"}, {"id": "9", "outcome": "win"}]
    # 3 of 4 common ids agree; expected agreement (2·1 + 1·2 + 1·1) / 16 = 5/16 → κ = (3/4 - 5/16) / (11/16) = 7/11
    assert agreement(judge, human) == {"n": 4, "agreement": 75.0, "kappa": pytest.approx(7 / 11, abs=1e-4)}


def test_kappa_is_undefined_when_both_raters_give_one_label_everywhere():
    judge = [{"id": str(i), "outcome": "tie"} for i in range(4)]
    assert agreement(judge, judge) == {"n": 4, "agreement": 100.0, "kappa": None}


def test_firefly_spreadsheet(shared_data):
    items = load_prompt_set(str(shared_data / "eval" / "firefly" / "firefly-eval.xlsx"))
    assert len(items) == 130 and len({it["category"] for it in items}) == 13
    assert items[0]["category"] == "brainstorming" and items[0]["prompt"] == "如何提高家庭装修的效率和节约装修成本？"


def test_compare_cli_caches_answers_and_writes_report(tmp_path, monkeypatch):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": it["id"], "prompt": it["prompt"], "category": it["category"]}) + "\n"
                               for it in ITEMS), encoding="utf-8")
    calls = {"model-a": 0, "model-b": 0, "judge": 0}

    def load_generate_fn(model, adapter=None, **settings):
        def generate(batch):
            calls[model] += len(batch)
            if model == "judge":
                return scripted_judge(batch)
            side = "a" if model == "model-a" else "b"
            return [f"answer-{side} for {conv[0]['content']}" for conv in batch]
        return generate

    monkeypatch.setattr("ember.inference.engine.load_generate_fn", load_generate_fn)
    out = tmp_path / "cmp"
    argv = ["eval", "compare", "--model-a", "model-a", "--model-b", "model-b", "--prompts", str(prompts),
            "--judge", "judge", "--out", str(out), "--no-progress"]
    assert ember_main(argv) == 0
    assert calls == {"model-a": 8, "model-b": 8, "judge": 16}
    assert ember_main(argv) == 0  # answers and judge outputs come from the caches
    assert calls == {"model-a": 8, "model-b": 8, "judge": 16}
    assert len((out / "judge_outputs.jsonl").read_text(encoding="utf-8").splitlines()) == 16
    scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert (scores["judge/win_rate"], scores["judge/tie_rate"], scores["judge/loss_rate"]) == (37.5, 37.5, 25.0)
    assert scores["judge/n"] == 8 and scores["meta"]["kind"] == "compare"
    assert scores["judge/unparsed"] == 1 and scores["judge/inconsistent"] == 2  # m5's missing mark; m2 and m5
    md = (out / "pairwise.md").read_text(encoding="utf-8")
    assert "**Overall:** 37.50% win, 37.50% tie, 25.00% loss (n = 8)" in md
    assert "| math | 1 | 3 | 1 | 5 | 20.00 | 60.00 | 20.00 |" in md
    assert "Judge outputs without a verdict: 1 of 16; pairs judged differently in the two orders: 2" in md
    assert (out / "pairwise_judge.png").read_bytes()[:4] == b"\x89PNG"
    items = [json.loads(x) for x in (out / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(items) == 8 and items[0]["judge_outputs"][0].endswith("[[1]]")

    # An edited judge template changes every judge prompt: all 16 are judged again, answers stay cached.
    from ember.evaluation.pairwise import DEFAULT_TEMPLATE

    edited = tmp_path / "judge.jinja"
    edited.write_text("Be brief.\n" + DEFAULT_TEMPLATE.read_text(encoding="utf-8"), encoding="utf-8")
    assert ember_main(argv + ["--judge-template", str(edited)]) == 0
    assert calls == {"model-a": 8, "model-b": 8, "judge": 32}


def test_likelihood_judge_reads_the_most_likely_mark_and_the_swap_catches_position_bias(tiny_lm, smol_tokenizer):
    import math

    from ember.data.render import Renderer
    from ember.evaluation.pairwise import likelihood_judge

    from .conftest import FORCED_LOGIT, force_token

    (two,) = smol_tokenizer("2", add_special_tokens=False)["input_ids"]
    judge = likelihood_judge(force_token(tiny_lm, two), smol_tokenizer, Renderer(smol_tokenizer))  # a judge that always says "Answer 2"
    (out,) = judge([[{"role": "user", "content": "Which answer is better?"}]])
    assert out.endswith("\n[[2]]") and parse_verdict(out) == "2"
    scores = dict(re.findall(r"(1|2|TIE): (-?[\d.]+)", out))
    vocab = tiny_lm.lm_head.out_features
    assert float(scores["2"]) == pytest.approx(FORCED_LOGIT - math.log(math.exp(FORCED_LOGIT) + vocab - 1), abs=1e-3)
    assert float(scores["1"]) == pytest.approx(-math.log(math.exp(FORCED_LOGIT) + vocab - 1), abs=1e-3)

    answers_a = {it["id"]: f"answer-a {it['id']}" for it in ITEMS}
    answers_b = {it["id"]: f"answer-b {it['id']}" for it in ITEMS}
    records = judge_pairs(ITEMS[:3], answers_a, answers_b, judge, load_template(), progress=False)
    assert [r["verdicts"] for r in records] == [["2", "2"]] * 3  # always the second position ...
    assert [r["outcome"] for r in records] == ["tie"] * 3  # ... so nothing counts
