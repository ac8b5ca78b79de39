"""Run a multiple-choice benchmark: prompts → choice log-likelihoods → items → accuracy per subject / category.

The prediction is the choice whose continuation has the highest summed log-likelihood (the first one on a tie).
Accuracy is over questions (micro): overall, per subject and per category (a subject in two categories, as CMMLU's
"China specific" ones, counts in both); `<task>/accuracy_macro` is the plain mean of the per-subject accuracies.
Everything in the scores is recomputed from the items, so `items.jsonl` alone reproduces `scores.json`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Iterable, Optional

from ember.evaluation.benchmarks import CATEGORIES, LETTERS, Subject, spec_for
from ember.evaluation.outputs import percent
from ember.evaluation.prompts import MCPrompt, PromptForm, build_prompt
from ember.evaluation.scoring import Request, prompt_length, score_requests


def model_max_length(model, tokenizer) -> int:
    limits = [getattr(model.config, "max_position_embeddings", None), getattr(tokenizer, "model_max_length", None)]
    usable = [n for n in limits if isinstance(n, int) and 0 < n < 10**7]
    return min(usable) if usable else 2048


def fit_prompt(spec, subject, question, shots: int, form: PromptForm, tokenizer, max_length: int,
               system: Optional[str] = None, renderer=None) -> MCPrompt:
    """The prompt with as many of the `shots` examples as fit in `max_length` tokens (fewer for long questions)."""
    for k in range(shots, -1, -1):
        prompt = build_prompt(spec, subject, question, k, form, renderer, system)
        # The longest continuation is a few tokens; 8 is a safe allowance for multi-token letters.
        if prompt_length(tokenizer, Request(prompt.text, prompt.continuations, prompt.add_special_tokens)) + 8 <= max_length:
            return prompt
    return prompt  # even zero-shot is too long: score it anyway, the model truncates nothing and may degrade


def run_benchmark(model, tokenizer, task: str, subjects: list[Subject], *, shots: int = 5, form: PromptForm = "plain",
                  batch_size: int = 8, max_length: Optional[int] = None, progress: bool = True,
                  system: Optional[str] = None, renderer=None) -> tuple[dict[str, Any], list[dict]]:
    """Score every question of `subjects`; chat forms render through `renderer` (the run's)."""
    spec = spec_for(task)
    max_length = max_length or model_max_length(model, tokenizer)
    jobs = []
    for subject in subjects:
        for index, question in enumerate(subject.questions):
            jobs.append((subject, index, question, fit_prompt(spec, subject, question, shots, form, tokenizer, max_length, system, renderer)))
    requests = [Request(p.text, p.continuations, p.add_special_tokens) for _, _, _, p in jobs]
    logliks = score_requests(model, tokenizer, requests, batch_size=batch_size, progress=progress, desc=task)
    items = []
    for (subject, index, question, prompt), scores in zip(jobs, logliks, strict=True):
        best = max(range(len(scores)), key=lambda i: (scores[i], -i))
        items.append({
            "task": task,
            "subject": subject.name,
            "categories": list(subject.categories),
            "index": index,
            "id": question.id,
            "shots": prompt.shots,
            "prompt": prompt.text,
            "choices": [
                {"label": LETTERS[i], "text": text, "continuation": cont, "loglik": score}
                for i, (text, cont, score) in enumerate(zip(question.choices, prompt.continuations, scores, strict=True))
            ],
            "prediction": LETTERS[best],
            "gold": question.gold,
            "correct": best == question.answer,
        })
    return aggregate_accuracy(task, items), items


def aggregate_accuracy(task: str, items: Iterable[dict]) -> dict[str, Any]:
    """`<task>/accuracy`, `<task>/accuracy_macro`, `<task>/n`, `<task>/<category>` plus the subject/category tables."""
    per_subject: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    per_category: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    subject_categories: dict[str, list[str]] = {}
    total = [0, 0]
    for item in items:
        ok = int(bool(item["correct"]))
        subject_categories[item["subject"]] = item["categories"]
        for bucket in (per_subject[item["subject"]], total, *(per_category[c] for c in item["categories"])):
            bucket[0] += ok
            bucket[1] += 1
    subjects = {
        name: {"categories": subject_categories[name], "n": n, "correct": c, "accuracy": percent(c, n)}
        for name, (c, n) in sorted(per_subject.items())
    }
    order = {c: i for i, c in enumerate(CATEGORIES)}
    categories = {
        name: {"n": n, "correct": c, "accuracy": percent(c, n),
               "subjects": sum(1 for cats in subject_categories.values() if name in cats)}
        for name, (c, n) in sorted(per_category.items(), key=lambda kv: (order.get(kv[0], 99), kv[0]))
    }
    scores: dict[str, Any] = {
        f"{task}/accuracy": percent(*total),
        f"{task}/accuracy_macro": round(sum(s["accuracy"] for s in subjects.values()) / len(subjects), 4) if subjects else 0.0,
        f"{task}/n": total[1],
    }
    scores.update({f"{task}/{name}": cat["accuracy"] for name, cat in categories.items()})
    scores["subjects"] = {task: subjects}
    scores["categories"] = {task: categories}
    return scores


def merge_scores(into: dict[str, Any], part: dict[str, Any]) -> dict[str, Any]:
    """Add one task's scores to a run's scores.json (sections are merged per task)."""
    for key, value in part.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            into[key].update(value)
        else:
            into[key] = value
    return into
