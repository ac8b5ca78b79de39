"""The eval runs behind `ember eval bench|gen|compare`: read the data first (a wrong path fails in a second, not after a
model load), then load models through the inference layer — so prompts are rendered by the run's own renderer, with
the system prompt it was trained with — score, and write the run directory."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from ember.errors import EmberError

MC_TASKS = ("cmmlu", "ceval", "mmlu")
TASKS = (*MC_TASKS, "gsm8k")


@dataclass
class EvalSettings:
    """What every eval run shares: where it writes, how much it reads, how it generates."""

    out: str
    limit: Optional[int] = None
    seed: int = 0  # `limit` samples across categories with this seed
    batch_size: int = 8
    label: Optional[str] = None
    progress: bool = True
    max_new_tokens: int = 512
    history_max_tokens: Optional[int] = None
    adapter: Optional[str] = None
    extra_meta: dict[str, Any] = field(default_factory=dict)


def lazy_generate(model: str, settings: EvalSettings, adapter: Optional[str] = None) -> Callable:
    """A GenerateFn whose engine (and model) loads only when the first answer is needed."""
    from ember.inference.engine import load_generate_fn

    fn: Optional[Callable] = None

    def call(batch):
        nonlocal fn
        if fn is None:
            fn = load_generate_fn(model, adapter, max_new_tokens=settings.max_new_tokens,
                                  batch_size=settings.batch_size, history_max_tokens=settings.history_max_tokens)
        return fn(batch)

    return call


def load_scorer(model: str, adapter: Optional[str], device: str):
    """The model as it was trained (adapter, tokenizer, template, system prompt), on `device`, in eval mode."""
    import torch

    from ember.inference.loading import load_for_inference

    loaded = load_for_inference(model, adapter, dtype="auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    loaded.model = loaded.model.to(device).eval()
    return loaded


def sample_across(rows: list[dict], limit: Optional[int], seed: int, key: str) -> list[dict]:
    """At most `limit` rows, drawn round-robin across the values of `key` (each group shuffled with `seed`), in
    their file order — so `--limit 20` of a sheet sorted by category sees every category, not only the first."""
    if limit is None or limit >= len(rows):
        return rows
    rng = random.Random(seed)
    groups: dict[Any, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(row.get(key), []).append(i)
    for members in groups.values():
        rng.shuffle(members)
    chosen: list[int] = []
    queues = list(groups.values())
    while len(chosen) < limit:
        for members in queues:
            if members and len(chosen) < limit:
                chosen.append(members.pop())
    return [rows[i] for i in sorted(chosen)]


def _meta(settings: EvalSettings, kind: str, **extra: Any) -> dict[str, Any]:
    meta = {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "scale": "0-100"}
    if settings.label:
        meta["label"] = settings.label
    meta.update({k: v for k, v in {**extra, **settings.extra_meta}.items() if v is not None})
    return meta


def _ordered(scores: dict[str, Any]) -> dict[str, Any]:
    """Flat metrics first, then the sections, so scores.json reads top-down."""
    return {**{k: v for k, v in scores.items() if not isinstance(v, dict)},
            **{k: v for k, v in scores.items() if isinstance(v, dict)}}


def data_sources(values: Sequence[str], tasks: Sequence[str]) -> dict[str, str]:
    sources: dict[str, str] = {}
    for value in values or []:
        task, sep, path = value.partition("=")
        if sep and task in TASKS:
            sources[task] = path
        elif len(tasks) == 1:
            sources[tasks[0]] = value
        else:
            raise EmberError(f"--data {value}: with several tasks write TASK=PATH, e.g. --data cmmlu=data/cmmlu")
    return sources


def run_bench(model: str, tasks: Sequence[str], settings: EvalSettings, *, data: Sequence[str] = (),
              subjects: Optional[Sequence[str]] = None, shots: int = 5, prompt_format: str = "auto",
              device: str = "auto") -> dict[str, Any]:
    """Multiple-choice benchmarks (answer-letter log-likelihood) and GSM8K; returns the scores written."""
    from ember.evaluation.benchmarks import load_benchmark
    from ember.evaluation.gsm8k import load_gsm8k, run_gsm8k
    from ember.evaluation.multiple_choice import merge_scores, run_benchmark
    from ember.evaluation.outputs import run_dir, write_run

    tasks = list(dict.fromkeys(tasks))
    if not 0 <= shots <= 5:
        raise EmberError(f"--shots {shots}: choose 0–5 (each subject's dev split holds 5 examples)")
    if settings.limit is not None and settings.limit < 1:
        raise EmberError(f"--limit {settings.limit}: give a positive number of questions per subject")
    sources = data_sources(data, tasks)
    if subjects and len([t for t in tasks if t in MC_TASKS]) > 1:
        raise EmberError("--subjects applies to one benchmark at a time; run the benchmarks separately")
    sets = {t: load_benchmark(t, sources.get(t), subjects or None, settings.limit) for t in tasks if t in MC_TASKS}
    if "gsm8k" in tasks:
        if "gsm8k" not in sources:
            raise EmberError("gsm8k needs --data gsm8k=PATH/test.jsonl (a JSONL file of {question, answer})")
        sets["gsm8k"] = load_gsm8k(sources["gsm8k"], settings.limit)
    out = run_dir(settings.out)
    scores: dict[str, Any] = {}
    items: list[dict] = []
    form = prompt_format
    if any(t in MC_TASKS for t in tasks):
        loaded = load_scorer(model, settings.adapter, device)
        if form == "auto":
            form = "chat" if loaded.renderer is not None else "plain"
        elif form != "plain" and loaded.renderer is None:
            raise EmberError(f"--prompt-format {form} needs a chat template and {model} has none; use plain")
        for task in (t for t in tasks if t in MC_TASKS):
            part, task_items = run_benchmark(loaded.model, loaded.tokenizer, task, sets[task], shots=shots, form=form,
                                             batch_size=settings.batch_size, progress=settings.progress,
                                             system=loaded.default_system, renderer=loaded.renderer)
            merge_scores(scores, part)
            items += task_items
            print(f"{task}: accuracy {part[f'{task}/accuracy']:.2f}% over {part[f'{task}/n']} questions")
        del loaded
    if "gsm8k" in tasks:
        part, task_items = run_gsm8k(sets["gsm8k"], lazy_generate(model, settings, settings.adapter),
                                     settings.batch_size, progress=settings.progress)
        merge_scores(scores, part)
        items += task_items
        print(f"gsm8k: accuracy {part['gsm8k/accuracy']:.2f}% over {part['gsm8k/n']} problems")
    scores["meta"] = _meta(settings, "bench", model=model, adapter=settings.adapter, tasks=tasks, shots=shots,
                           prompt_format=form, limit=settings.limit, subjects=list(subjects) if subjects else None,
                           data={t: sources.get(t, "hub") for t in tasks})
    write_run(out, _ordered(scores), items)
    print(f"wrote {out / 'scores.json'} and {out / 'items.jsonl'}")
    return scores


def run_gen(model: str, settings: EvalSettings, *, data: Optional[str] = None, predictions: Optional[str] = None,
            prompt_field: Optional[str] = None, reference_field: Optional[str] = None, lang: str = "auto") -> dict[str, Any]:
    """Generate answers for a dataset (or read a predictions file), then BLEU-4 / ROUGE / exact match."""
    from ember.evaluation.generation_eval import generate_predictions, load_gen_dataset, load_predictions, score_predictions
    from ember.evaluation.outputs import run_dir, write_jsonl, write_run

    if bool(predictions) == bool(data):
        raise EmberError("give either --data FILE (generate, then score) or --predictions FILE (score only)")
    out = run_dir(settings.out)
    if predictions:
        rows = sample_across(load_predictions(predictions), settings.limit, settings.seed, "group")
    else:
        records = sample_across(load_gen_dataset(data, prompt_field, reference_field), settings.limit, settings.seed,
                                "group")
        rows = generate_predictions(records, lazy_generate(model, settings, settings.adapter), settings.batch_size,
                                    progress=settings.progress)
        write_jsonl(out / "predictions.jsonl", rows)
    scores, items = score_predictions(rows, lang)
    scores["meta"] = _meta(settings, "gen", model=None if predictions else model, data=data, predictions=predictions,
                           lang=lang, limit=settings.limit, seed=settings.seed if settings.limit else None,
                           history_max_tokens=settings.history_max_tokens)
    write_run(out, _ordered(scores), items)
    summary = ", ".join(f"{k} {scores[k]:.2f}" for k in ("bleu-4", "rouge-1", "rouge-2", "rouge-l", "exact_match"))
    print(f"{summary} (n = {scores['n']})\nwrote {out / 'scores.json'} and {out / 'items.jsonl'}")
    return scores


def run_compare(model_a: str, model_b: str, prompts: str, settings: EvalSettings, *, judge: Optional[str] = None,
                judge_template: Optional[str] = None, judge_mode: str = "generate") -> dict[str, Any]:
    """Answers of two models on a prompt set, judged pairwise (or left for `ember eval annotate`)."""
    from ember.evaluation.outputs import run_dir, write_json, write_jsonl
    from ember.evaluation.pairwise import cached_answers, judge_pairs, load_prompt_set, load_template, rates_line
    from ember.evaluation.pairwise_report import JUDGEMENTS, META, summarize_pairwise

    items = sample_across(load_prompt_set(prompts), settings.limit, settings.seed, "category")
    template = load_template(judge_template) if judge else None
    out = run_dir(settings.out)
    write_jsonl(out / "prompts.jsonl", items)
    write_json(out / META, {"model_a": model_a, "model_b": model_b, "judge": judge,
                            **({"judge_mode": judge_mode} if judge else {}),
                            "judge_template": judge_template or "judge_prompt.jinja (built in)",
                            "prompts": prompts, **({"label": settings.label} if settings.label else {})})
    answers = {}
    for side, model in (("a", model_a), ("b", model_b)):
        answers[side] = cached_answers(items, lazy_generate(model, settings), out / f"answers_{side}.jsonl", model,
                                       settings.batch_size, settings.progress)
    if judge:
        if judge_mode == "likelihood":
            from ember.evaluation.pairwise import likelihood_judge

            def make_judge():
                loaded = load_scorer(judge, None, "auto")
                return likelihood_judge(loaded.model, loaded.tokenizer, loaded.renderer, settings.batch_size)

            fn: Optional[Callable] = None

            def judge_fn(batch):
                nonlocal fn
                fn = fn or make_judge()
                return fn(batch)

            name = f"{judge} (likelihood)"
        else:
            judge_fn, name = lazy_generate(judge, settings), judge
        records = judge_pairs(items, answers["a"], answers["b"], judge_fn, template, settings.batch_size,
                              settings.progress, cache=out / "judge_outputs.jsonl", judge_name=name)
        write_jsonl(out / JUDGEMENTS, records)
    scores = summarize_pairwise(out)
    if "judge" in scores.get("categories", {}):
        print(f"judge: {rates_line(scores['categories']['judge']['overall'])}")
    else:
        print(f"answers ready; annotate with `ember eval annotate {out}` or judge with --judge MODEL")
    print(f"wrote {out / 'pairwise.md'}")
    return scores

