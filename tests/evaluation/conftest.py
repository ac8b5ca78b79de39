"""Eval fixtures: tiny benchmark directories in the real layouts, and a tiny Llama whose answer is forced."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

FORCED_LOGIT = 5.0


def write_csv(path: Path, header: list[str] | None, rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        if header is not None:
            writer.writerow(header)
        writer.writerows(rows)


def cmmlu_rows(golds: str, stem: str) -> list[list]:
    return [[i, f"{stem}问题{i}", "甲", "乙", "丙", "丁", g] for i, g in enumerate(golds)]


@pytest.fixture
def cmmlu_dir(tmp_path) -> Path:
    """CMMLU layout: agronomy (Other) answers B,A,B; chinese_history (Humanities + China specific) answers B,C."""
    root = tmp_path / "cmmlu"
    header = ["", "Question", "A", "B", "C", "D", "Answer"]
    for subject, golds in (("agronomy", "BAB"), ("chinese_history", "BC")):
        write_csv(root / "dev" / f"{subject}.csv", header, cmmlu_rows("CD", f"{subject}示例"))
        write_csv(root / "test" / f"{subject}.csv", header, cmmlu_rows(golds, subject))
    return root


@pytest.fixture
def tiny_lm(smol_tokenizer, tiny_model_config):
    """A 2-layer random Llama over the SmolLM2 vocabulary (fp32, eval mode)."""
    from ember.models.loading import load_model

    return load_model(tiny_model_config, vocab_size=len(smol_tokenizer)).eval()


def force_token(model, token_id: int, logit: float = FORCED_LOGIT):
    """Make every position predict `token_id` with logit `logit` and every other token with logit 0."""
    hidden, vocab = model.lm_head.in_features, model.lm_head.out_features
    head = torch.nn.Linear(hidden, vocab, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.bias[token_id] = logit
    model.lm_head = head
    return model


@pytest.fixture
def forced_lm(tiny_lm, smol_tokenizer):
    """A tiny Llama whose next token is always "B" (the letter without a leading space)."""
    (token_b,) = smol_tokenizer("B", add_special_tokens=False)["input_ids"]
    return force_token(tiny_lm, token_b)
