"""BLEU-4 and ROUGE-1/2/L between one prediction and one reference, on a 0–100 scale.

Tokens: text with any CJK character is segmented into words by jieba; other text is split into words and single
punctuation marks (`\\w+|[^\\w\\s]`). Case is kept. Whitespace never forms a token.

BLEU-4 (sentence level, one reference; Papineni et al. 2002):
    p_n  = clipped n-gram matches / candidate n-grams, for n = 1..4
    smoothing: p_1 is unsmoothed (no shared word → BLEU 0); for n = 2..4, p_n = (matches + 1) / (candidate n-grams + 1)
               ("add-one", Lin & Och 2004), so one missing 4-gram does not zero the whole score
    BP   = 1 if c > r else exp(1 - r / c)     (c, r = candidate and reference lengths; BP = 0 for an empty candidate)
    BLEU = BP · exp(¼ Σ log p_n)
ROUGE-N (n = 1, 2) F1: clipped n-gram overlap; P = overlap / candidate n-grams, R = overlap / reference n-grams,
    F1 = 2PR / (P + R). ROUGE-L F1: the same with the longest common subsequence length as the overlap and the token
    counts as the denominators. Any empty side scores 0.
A corpus score is the mean of the per-item scores, so every item's numbers in items.jsonl average to scores.json.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3000-\u303f\uff00-\uffef]")
_WORD = re.compile(r"\w+|[^\w\s]")


def has_cjk(text: str) -> bool:
    return bool(_CJK.search(text))


def tokenize(text: str, lang: str = "auto") -> list[str]:
    """`lang`: "zh" (jieba), "en" (words and punctuation) or "auto" (jieba when the text has any CJK character)."""
    if lang == "zh" or (lang == "auto" and has_cjk(text)):
        import jieba

        jieba.setLogLevel(logging.WARNING)
        return [t for t in jieba.lcut(text) if t.strip()]
    if lang not in ("en", "auto"):
        raise ValueError(f"lang must be auto, zh or en; got {lang!r}")
    return _WORD.findall(text)


def ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def bleu4(candidate: list[str], reference: list[str]) -> float:
    if not candidate or not reference:
        return 0.0
    log_sum = 0.0
    for n in range(1, 5):
        cand, ref = ngrams(candidate, n), ngrams(reference, n)
        matches = sum(min(count, ref[gram]) for gram, count in cand.items())
        total = sum(cand.values())
        if n == 1:
            if matches == 0:
                return 0.0
            p = matches / total
        else:
            p = (matches + 1) / (total + 1)
        log_sum += math.log(p)
    c, r = len(candidate), len(reference)
    brevity = 1.0 if c > r else math.exp(1 - r / c)
    return 100.0 * brevity * math.exp(log_sum / 4)


def _f1(overlap: int, cand_total: int, ref_total: int) -> float:
    if overlap == 0 or cand_total == 0 or ref_total == 0:
        return 0.0
    p, r = overlap / cand_total, overlap / ref_total
    return 100.0 * 2 * p * r / (p + r)


def rouge_n(candidate: list[str], reference: list[str], n: int) -> float:
    cand, ref = ngrams(candidate, n), ngrams(reference, n)
    overlap = sum(min(count, ref[gram]) for gram, count in cand.items())
    return _f1(overlap, sum(cand.values()), sum(ref.values()))


def lcs_length(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: list[str], reference: list[str]) -> float:
    return _f1(lcs_length(candidate, reference), len(candidate), len(reference))


def text_scores(prediction: str, reference: str, lang: str = "auto") -> dict[str, float]:
    cand, ref = tokenize(prediction, lang), tokenize(reference, lang)
    return {
        "bleu-4": bleu4(cand, ref),
        "rouge-1": rouge_n(cand, ref, 1),
        "rouge-2": rouge_n(cand, ref, 2),
        "rouge-l": rouge_l(cand, ref),
    }
