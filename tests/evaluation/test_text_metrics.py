"""BLEU-4 / ROUGE against values computed by hand from the formulas in ember/evaluation/text_metrics.py."""

from __future__ import annotations

import math

import pytest

from ember.evaluation.text_metrics import bleu4, lcs_length, rouge_l, rouge_n, text_scores, tokenize


def test_english_sentence_by_hand():
    pred, ref = "the cat sat on the mat", "the cat is on the mat"
    # clipped matches / candidate n-grams: 1-grams 5/6; 2-grams 3 of 5 → (3+1)/(5+1); 3-grams 1 of 4 → 2/5;
    # 4-grams 0 of 3 → 1/4. Equal lengths → BP = 1. Product = 5·4·2·1 / (6·6·5·4) = 1/18.
    scores = text_scores(pred, ref)
    assert scores["bleu-4"] == pytest.approx(100 * (1 / 18) ** 0.25)
    assert scores["rouge-1"] == pytest.approx(100 * 5 / 6)  # P = R = 5/6
    assert scores["rouge-2"] == pytest.approx(60.0)  # 3 shared bigrams of 5 on both sides
    assert scores["rouge-l"] == pytest.approx(100 * 5 / 6)  # LCS "the cat on the mat" = 5


def test_chinese_prefix_by_hand():
    # jieba: 我 / 爱 / 北京 (3 words) vs 我 / 爱 / 北京 / 天安门 (4 words)
    assert tokenize("我爱北京天安门") == ["我", "爱", "北京", "天安门"]
    scores = text_scores("我爱北京", "我爱北京天安门")
    # p1 = 3/3, p2 = (2+1)/(2+1), p3 = (1+1)/(1+1), p4 = (0+1)/(0+1); BP = exp(1 - 4/3)
    assert scores["bleu-4"] == pytest.approx(100 * math.exp(-1 / 3))
    assert scores["rouge-1"] == pytest.approx(100 * 6 / 7)  # P = 1, R = 3/4
    assert scores["rouge-2"] == pytest.approx(80.0)  # P = 2/2, R = 2/3
    assert scores["rouge-l"] == pytest.approx(100 * 6 / 7)


def test_chinese_partial_overlap_by_hand():
    assert tokenize("今天天气很好") == ["今天天气", "很", "好"]
    assert tokenize("今天天气不好") == ["今天天气", "不好"]
    scores = text_scores("今天天气很好", "今天天气不好")
    # p1 = 1/3, p2 = (0+1)/(2+1), p3 = (0+1)/(1+1), p4 = (0+1)/(0+1); c = 3 > r = 2 → BP = 1
    assert scores["bleu-4"] == pytest.approx(100 * (1 / 3 * 1 / 3 * 1 / 2) ** 0.25)
    assert scores["rouge-1"] == pytest.approx(40.0)  # P = 1/3, R = 1/2
    assert scores["rouge-2"] == 0.0
    assert scores["rouge-l"] == pytest.approx(40.0)


def test_edge_cases():
    assert text_scores("", "reference text") == {"bleu-4": 0.0, "rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0}
    assert bleu4(["x", "y"], ["a", "b"]) == 0.0  # no shared word: unigram precision is never smoothed
    same = text_scores("exactly the same words here", "exactly the same words here")
    assert same == {"bleu-4": pytest.approx(100.0), "rouge-1": pytest.approx(100.0), "rouge-2": pytest.approx(100.0),
                    "rouge-l": pytest.approx(100.0)}
    assert rouge_n(["a", "a", "a"], ["a"], 1) == pytest.approx(50.0)  # clipping: overlap 1, P = 1/3, R = 1
    assert lcs_length(list("ABCBDAB"), list("BDCABA")) == 4
    assert rouge_l(["a"], []) == 0.0


def test_tokenizer_modes():
    assert tokenize("Hello, world!") == ["Hello", ",", "world", "!"]
    assert tokenize("北京 is big", lang="en") == ["北京", "is", "big"]  # en mode never segments Chinese words
    with pytest.raises(ValueError):
        tokenize("x", lang="fr")
