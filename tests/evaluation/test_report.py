"""`ember eval report`: base vs tuned tables with deltas, generation metrics, pairwise rates, charts."""

from __future__ import annotations

import json

from ember.cli import main
from ember.evaluation.outputs import write_json, write_run
from ember.evaluation.pairwise_report import summarize_pairwise


def bench_run(path, accuracy, stem, label):
    write_run(path, {"cmmlu/accuracy": accuracy, "cmmlu/n": 10, "cmmlu/STEM": stem, "cmmlu/Other": 50.0,
                     "meta": {"kind": "bench", "label": label}}, [])
    return path


def test_report_side_by_side(tmp_path):
    base = bench_run(tmp_path / "base", 25.0, 20.0, "base")
    tuned = bench_run(tmp_path / "tuned", 40.0, 35.5, "tuned")
    gen_base, gen_tuned = tmp_path / "gen_base", tmp_path / "gen_tuned"
    write_run(gen_base, {"bleu-4": 10.0, "rouge-1": 20.0, "rouge-2": 5.0, "rouge-l": 18.0, "exact_match": 0.0, "n": 80,
                         "meta": {"kind": "gen"}}, [])
    write_run(gen_tuned, {"bleu-4": 12.5, "rouge-1": 25.0, "rouge-2": 7.0, "rouge-l": 21.0, "exact_match": 5.0, "n": 80,
                          "meta": {"kind": "gen"}}, [])
    cmp = tmp_path / "cmp"
    cmp.mkdir()
    write_json(cmp / "compare.json", {"model_a": "tuned", "model_b": "base", "judge": "j", "judge_mode": "likelihood"})
    verdicts = [["1", "2"], ["1", "2"], ["1", "1"], ["2", "1"]]
    (cmp / "judgements.jsonl").write_text("".join(
        json.dumps({"id": str(i), "category": "qa", "outcome": o, "verdicts": v, "consistent": o != "tie"}) + "\n"
        for i, (o, v) in enumerate(zip(["win", "win", "tie", "loss"], verdicts))), encoding="utf-8")
    summarize_pairwise(cmp)
    out = tmp_path / "report"
    argv = ["eval", "report", str(base), str(tuned), str(gen_base), str(gen_tuned), str(cmp), "--out", str(out)]
    assert main(argv) == 0
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "| metric | base | tuned | gen_base | gen_tuned | cmp | Δ tuned |" not in md  # kinds are tabled apart
    assert "| metric | base | tuned | Δ tuned |" in md
    assert "| cmmlu/accuracy | 25.00 | 40.00 | +15.00 |" in md
    assert "| cmmlu/STEM | 20.00 | 35.50 | +15.50 |" in md
    assert "| bleu-4 | 10.00 | 12.50 | +2.50 |" in md and "| n | 80 | 80 | +0 |" in md
    assert "**judge:** 50.00% win, 25.00% tie, 25.00% loss (n = 4)" in md
    assert ("Judge: j, verdict by likelihood. Outputs without a verdict: 0 of 8; pairs judged differently in the two "
            "orders: 1 (both count as ties).") in md
    for png in ("report_cmmlu.png", "report_generation.png", "report_cmp_judge.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
        assert f"]({png})" in md
    assert main(["eval", "report", str(base), "--labels", "a", "b", "--out", str(out)]) == 2
