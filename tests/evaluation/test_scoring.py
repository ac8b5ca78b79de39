"""Log-likelihood scoring: exact sums against a one-sequence reference, and a model whose answer is forced."""

from __future__ import annotations

import math

import pytest
import torch

from ember.evaluation.benchmarks import load_benchmark
from ember.evaluation.multiple_choice import aggregate_accuracy, run_benchmark
from ember.evaluation.scoring import Request, score_requests

from .conftest import FORCED_LOGIT


def reference_loglik(model, tokenizer, request: Request, continuation: str) -> float:
    """One unpadded sequence, full logits, plain loop: the definition the batched code must reproduce."""
    prompt = tokenizer(request.prompt, add_special_tokens=request.add_special_tokens)["input_ids"]
    cont = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([prompt + cont])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
    return sum(float(logprobs[len(prompt) - 1 + t, tok]) for t, tok in enumerate(cont))


def test_batched_scores_equal_one_sequence_reference(tiny_lm, smol_tokenizer):
    requests = [
        Request("以下是问题。答案：", ("A", "B", "C", "D")),
        Request("The capital of France is", (" Paris", " the city of light", " Berlin, Germany")),
        Request("短", ("北京天安门", "上海")),
        Request("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", ("Hello there!", "B"), add_special_tokens=False),
    ]
    expected = [[reference_loglik(tiny_lm, smol_tokenizer, r, c) for c in r.continuations] for r in requests]
    for batch_size in (1, 3, 16):
        got = score_requests(tiny_lm, smol_tokenizer, requests, batch_size=batch_size, progress=False)
        for g, e in zip(got, expected, strict=True):
            assert g == pytest.approx(e, abs=2e-4)


def test_forced_model_exact_logliks(forced_lm, smol_tokenizer):
    vocab = forced_lm.lm_head.out_features
    log_z = math.log(math.exp(FORCED_LOGIT) + vocab - 1)
    (got,) = score_requests(forced_lm, smol_tokenizer, [Request("问题：", ("A", "B", "C"))], progress=False)
    assert got == pytest.approx([-log_z, FORCED_LOGIT - log_z, -log_z], rel=1e-5)


def test_forced_model_accuracy_and_categories(forced_lm, smol_tokenizer, cmmlu_dir):
    subjects = load_benchmark("cmmlu", str(cmmlu_dir))
    scores, items = run_benchmark(forced_lm, smol_tokenizer, "cmmlu", subjects, shots=2, form="plain",
                                  batch_size=2, progress=False)
    assert [i["prediction"] for i in items] == ["B"] * 5
    assert [i["correct"] for i in items] == [True, False, True, True, False]  # golds B A B | B C
    assert scores["cmmlu/accuracy"] == 60.0 and scores["cmmlu/n"] == 5
    assert scores["cmmlu/Other"] == pytest.approx(200 / 3, abs=1e-4)  # agronomy 2/3
    assert scores["cmmlu/Humanities"] == scores["cmmlu/China specific"] == 50.0  # chinese_history 1/2
    assert scores["cmmlu/accuracy_macro"] == pytest.approx((200 / 3 + 50) / 2, abs=1e-4)
    assert scores["subjects"]["cmmlu"]["agronomy"] == {"categories": ["Other"], "n": 3, "correct": 2,
                                                      "accuracy": pytest.approx(200 / 3, abs=1e-4)}
    assert scores["categories"]["cmmlu"]["China specific"]["subjects"] == 1
    first = items[0]
    assert first["prompt"].endswith("agronomy问题0\nA. 甲\nB. 乙\nC. 丙\nD. 丁\n答案：") and first["shots"] == 2
    assert [c["continuation"] for c in first["choices"]] == ["A", "B", "C", "D"]


def test_items_recompute_scores_without_ember(forced_lm, smol_tokenizer, cmmlu_dir, tmp_path):
    """Re-derive every number of scores.json from items.jsonl with plain Python (argmax of the logged logliks)."""
    import json

    from ember.evaluation.outputs import write_run

    subjects = load_benchmark("cmmlu", str(cmmlu_dir))
    scores, items = run_benchmark(forced_lm, smol_tokenizer, "cmmlu", subjects, shots=0, form="plain", progress=False)
    write_run(tmp_path, scores, items)
    saved = json.loads((tmp_path / "scores.json").read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in (tmp_path / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    per_subject: dict[str, list[bool]] = {}
    for row in rows:
        logliks = [c["loglik"] for c in row["choices"]]
        predicted = row["choices"][logliks.index(max(logliks))]["label"]
        assert predicted == row["prediction"]
        per_subject.setdefault(row["subject"], []).append(predicted == row["gold"])
    everything = [ok for oks in per_subject.values() for ok in oks]
    assert saved["cmmlu/accuracy"] == pytest.approx(100 * sum(everything) / len(everything), abs=1e-4)
    for name, oks in per_subject.items():
        assert saved["subjects"]["cmmlu"][name]["accuracy"] == pytest.approx(100 * sum(oks) / len(oks), abs=1e-4)
    assert aggregate_accuracy("cmmlu", rows) == saved


def test_chat_form_with_forced_model(forced_lm, smol_tokenizer, cmmlu_dir):
    subjects = load_benchmark("cmmlu", str(cmmlu_dir), subjects=["chinese_history"])
    from ember.data.render import Renderer

    scores, items = run_benchmark(forced_lm, smol_tokenizer, "cmmlu", subjects, shots=1, form="chat", progress=False,
                                  renderer=Renderer(smol_tokenizer))
    assert scores["cmmlu/accuracy"] == 50.0
    assert items[0]["prompt"].startswith("<|im_start|>system") and items[0]["prompt"].endswith("<|im_start|>assistant\n")


def test_long_prompts_drop_shots(forced_lm, smol_tokenizer, cmmlu_dir):
    subjects = load_benchmark("cmmlu", str(cmmlu_dir), subjects=["agronomy"], limit=1)
    _, items = run_benchmark(forced_lm, smol_tokenizer, "cmmlu", subjects, shots=2, form="plain", max_length=60,
                             progress=False)
    assert items[0]["shots"] < 2
