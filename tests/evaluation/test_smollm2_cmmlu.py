"""`ember eval bench` end to end on the real SmolLM2: CMMLU, 2 subjects × 2 questions, through the `ember` CLI."""

from __future__ import annotations

import json
import math

import pytest

pytestmark = pytest.mark.smollm2


@pytest.fixture
def one_thread():
    """The 2-core test box is shared: with other jobs running, 2 OpenMP threads spin-wait on each other and a
    SmolLM2 forward gets ~5x slower than with 1 (measured: 1.3 s vs 5.6-7.6 s for 235 tokens). Restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_cmmlu_limit_on_smollm2(shared_data, smollm2_dir, smol_tokenizer, tmp_path, one_thread):
    import torch
    from transformers import AutoModelForCausalLM

    from ember.cli import main
    from ember.evaluation.scoring import Request

    from .test_scoring import reference_loglik

    out = tmp_path / "bench"
    torch.manual_seed(0)
    code = main(["eval", "bench", "--model", "smollm2-135m-instruct", "--tasks", "cmmlu",
                 "--data", str(shared_data / "eval" / "cmmlu"), "--subjects", "agronomy", "chinese_history",
                 "--limit", "2", "--shots", "1", "--batch-size", "2", "--prompt-format", "plain", "--no-progress", "--out", str(out)])
    assert code == 0
    scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    items = [json.loads(x) for x in (out / "items.jsonl").read_text(encoding="utf-8").splitlines()]
    assert scores["cmmlu/n"] == 4 and len(items) == 4
    assert set(scores["subjects"]["cmmlu"]) == {"agronomy", "chinese_history"}
    assert {"cmmlu/Other", "cmmlu/Humanities", "cmmlu/China specific"} <= set(scores)
    assert scores["meta"]["prompt_format"] == "plain" and scores["meta"]["shots"] == 1
    correct = 0
    for item in items:
        logliks = [c["loglik"] for c in item["choices"]]
        assert all(math.isfinite(x) and x < 0 for x in logliks)
        assert item["prediction"] == "ABCD"[logliks.index(max(logliks))]
        correct += item["prediction"] == item["gold"]
    assert scores["cmmlu/accuracy"] == pytest.approx(100 * correct / 4)
    first = items[0]
    assert first["prompt"].startswith("以下是关于农学的单项选择题") and first["prompt"].endswith("答案：")
    # The logged log-likelihoods are exact: recompute the first question's from its logged prompt text.
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    request = Request(first["prompt"], tuple(c["continuation"] for c in first["choices"]))
    expected = [reference_loglik(model, smol_tokenizer, request, c) for c in request.continuations]
    assert [c["loglik"] for c in first["choices"]] == pytest.approx(expected, abs=1e-3)
