"""`ember eval bench|gen|compare|annotate|report`: each handler takes parsed args and returns an exit code."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable, Optional

from ember.errors import EmberError

MC_TASKS = ("cmmlu", "ceval", "mmlu")
TASKS = (*MC_TASKS, "gsm8k")


# ---- shared helpers ------------------------------------------------------------------------------------------------

def _generate_factory(model: str, args) -> Callable[[], Callable]:
    """A deferred GenerateFn: the engine (and its model) is only loaded when the first answer is needed."""

    def make():
        try:
            from ember.inference.engine import load_generate_fn
        except ImportError as exc:
            raise EmberError(f"generation is not available ({exc}); score an existing file with --predictions") from exc
        return load_generate_fn(model, getattr(args, "adapter", None), max_new_tokens=args.max_new_tokens,
                                batch_size=args.batch_size)

    return make


def _lazy(factory: Callable[[], Callable]) -> Callable:
    fn: Optional[Callable] = None

    def call(batch):
        nonlocal fn
        if fn is None:
            fn = factory()
        return fn(batch)

    return call


def _load_scoring_model(model: str, adapter: Optional[str], device: str):
    """Model, tokenizer and default system prompt for log-likelihood scoring; Ember output dirs (adapters) load as
    they were trained."""
    import torch

    try:
        from ember.inference.loading import load_for_inference
    except ImportError:
        load_for_inference = None
    if load_for_inference is not None:
        loaded = load_for_inference(model, adapter, dtype="auto")
        net, tokenizer, system = loaded.model, loaded.tokenizer, loaded.default_system
    else:
        from ember.config.schema import ModelConfig
        from ember.models.loading import load_model, load_tokenizer

        if adapter:
            raise EmberError("--adapter needs ember.inference; merge the adapter or pass the merged model directory")
        cfg = ModelConfig(name_or_path=model, dtype="float32")
        tokenizer = load_tokenizer(cfg)
        net, system = load_model(cfg, vocab_size=len(tokenizer)), None
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return net.to(device).eval(), tokenizer, system


def _meta(args, kind: str, **extra: Any) -> dict[str, Any]:
    meta = {"kind": kind, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "scale": "0-100"}
    if getattr(args, "label", None):
        meta["label"] = args.label
    meta.update({k: v for k, v in extra.items() if v is not None})
    return meta


def _data_sources(values: list[str], tasks: list[str]) -> dict[str, str]:
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


# ---- bench ---------------------------------------------------------------------------------------------------------

def cmd_bench(args) -> int:
    from ember.evaluation.benchmarks import load_benchmark
    from ember.evaluation.gsm8k import load_gsm8k, run_gsm8k
    from ember.evaluation.multiple_choice import merge_scores, run_benchmark
    from ember.evaluation.outputs import run_dir, write_run

    tasks = list(dict.fromkeys(args.tasks))
    if not 0 <= args.shots <= 5:
        raise EmberError(f"--shots {args.shots}: choose 0–5 (each subject's dev split holds 5 examples)")
    if args.limit is not None and args.limit < 1:
        raise EmberError(f"--limit {args.limit}: give a positive number of questions per subject")
    sources = _data_sources(args.data, tasks)
    subject_filter = args.subjects if args.subjects else None
    if subject_filter and len([t for t in tasks if t in MC_TASKS]) > 1:
        raise EmberError("--subjects applies to one benchmark at a time; run the benchmarks separately")
    # Read every data set before loading any model, so a wrong path fails in a second, not after a model load.
    data = {t: load_benchmark(t, sources.get(t), subject_filter, args.limit) for t in tasks if t in MC_TASKS}
    if "gsm8k" in tasks:
        if "gsm8k" not in sources:
            raise EmberError("gsm8k needs --data gsm8k=PATH/test.jsonl (a JSONL file of {question, answer})")
        data["gsm8k"] = load_gsm8k(sources["gsm8k"], args.limit)
    out = run_dir(args.out)
    scores: dict[str, Any] = {}
    items: list[dict] = []
    form = args.prompt_format
    if any(t in MC_TASKS for t in tasks):
        model, tokenizer, system = _load_scoring_model(args.model, args.adapter, args.device)
        if form == "auto":
            form = "chat" if getattr(tokenizer, "chat_template", None) else "plain"
        for task in (t for t in tasks if t in MC_TASKS):
            part, task_items = run_benchmark(model, tokenizer, task, data[task], shots=args.shots, form=form,
                                             batch_size=args.batch_size, progress=not args.no_progress, system=system)
            merge_scores(scores, part)
            items += task_items
            print(f"{task}: accuracy {part[f'{task}/accuracy']:.2f}% over {part[f'{task}/n']} questions")
        del model
    if "gsm8k" in tasks:
        generate = _lazy(_generate_factory(args.model, args))
        part, task_items = run_gsm8k(data["gsm8k"], generate, args.batch_size, progress=not args.no_progress)
        merge_scores(scores, part)
        items += task_items
        print(f"gsm8k: accuracy {part['gsm8k/accuracy']:.2f}% over {part['gsm8k/n']} problems")
    scores["meta"] = _meta(args, "bench", model=args.model, adapter=args.adapter, tasks=tasks, shots=args.shots,
                           prompt_format=form, limit=args.limit, subjects=subject_filter,
                           data={t: sources.get(t, "hub") for t in tasks})
    write_run(out, _ordered(scores), items)
    print(f"wrote {out / 'scores.json'} and {out / 'items.jsonl'}")
    return 0


def _ordered(scores: dict[str, Any]) -> dict[str, Any]:
    """Flat metrics first, then the sections, so scores.json reads top-down."""
    return {**{k: v for k, v in scores.items() if not isinstance(v, dict)},
            **{k: v for k, v in scores.items() if isinstance(v, dict)}}


# ---- gen -----------------------------------------------------------------------------------------------------------

def cmd_gen(args) -> int:
    from ember.evaluation.generation_eval import generate_predictions, load_gen_dataset, load_predictions, score_predictions
    from ember.evaluation.outputs import run_dir, write_jsonl, write_run

    if bool(args.predictions) == bool(args.data):
        raise EmberError("give either --data FILE (generate, then score) or --predictions FILE (score only)")
    out = run_dir(args.out)
    if args.predictions:
        rows = load_predictions(args.predictions)[: args.limit]
    else:
        records = load_gen_dataset(args.data, args.prompt_field, args.reference_field, args.limit)
        rows = generate_predictions(records, _lazy(_generate_factory(args.model, args)), args.batch_size,
                                    progress=not args.no_progress)
        write_jsonl(out / "predictions.jsonl", rows)
    scores, items = score_predictions(rows, args.lang)
    scores["meta"] = _meta(args, "gen", model=None if args.predictions else args.model, data=args.data,
                           predictions=args.predictions, lang=args.lang, limit=args.limit)
    write_run(out, _ordered(scores), items)
    summary = ", ".join(f"{k} {scores[k]:.2f}" for k in ("bleu-4", "rouge-1", "rouge-2", "rouge-l", "exact_match"))
    print(f"{summary} (n = {scores['n']})\nwrote {out / 'scores.json'} and {out / 'items.jsonl'}")
    return 0


# ---- compare / annotate --------------------------------------------------------------------------------------------

def cmd_compare(args) -> int:
    from ember.evaluation.outputs import run_dir, write_json, write_jsonl
    from ember.evaluation.pairwise import cached_answers, judge_pairs, load_prompt_set, load_template, rates_line
    from ember.evaluation.pairwise_report import JUDGEMENTS, META, summarize_pairwise

    items = load_prompt_set(args.prompts, args.limit)
    template = load_template(args.judge_template) if args.judge else None
    out = run_dir(args.out)
    write_jsonl(out / "prompts.jsonl", items)
    write_json(out / META, {"model_a": args.model_a, "model_b": args.model_b, "judge": args.judge,
                            **({"judge_mode": args.judge_mode} if args.judge else {}),
                            "judge_template": args.judge_template or "judge_prompt.jinja (built in)",
                            "prompts": args.prompts, **({"label": args.label} if args.label else {})})
    progress = not args.no_progress
    answers = {}
    for side, model in (("a", args.model_a), ("b", args.model_b)):
        generate = _lazy(_generate_factory(model, args))
        answers[side] = cached_answers(items, generate, out / f"answers_{side}.jsonl", model, args.batch_size, progress)
    if args.judge:
        if args.judge_mode == "likelihood":
            def make_judge():
                from ember.evaluation.pairwise import likelihood_judge

                model, tokenizer, _ = _load_scoring_model(args.judge, None, "auto")
                return likelihood_judge(model, tokenizer, args.batch_size)

            judge, judge_name = _lazy(make_judge), f"{args.judge} (likelihood)"
        else:
            judge, judge_name = _lazy(_generate_factory(args.judge, args)), args.judge
        records = judge_pairs(items, answers["a"], answers["b"], judge, template, args.batch_size, progress,
                              cache=out / "judge_outputs.jsonl", judge_name=judge_name)
        write_jsonl(out / JUDGEMENTS, records)
    scores = summarize_pairwise(out)
    if "judge" in scores.get("categories", {}):
        print(f"judge: {rates_line(scores['categories']['judge']['overall'])}")
    else:
        print(f"answers ready; annotate with `ember eval annotate {out}` or judge with --judge MODEL")
    print(f"wrote {out / 'pairwise.md'}")
    return 0


def cmd_annotate(args) -> int:
    from ember.evaluation.annotate import serve

    return serve(Path(args.run), args.host, args.port, args.annotator, args.seed)


def cmd_report(args) -> int:
    from ember.evaluation.report import write_report

    path = write_report([Path(r) for r in args.runs], Path(args.out), args.labels)
    print(f"wrote {path}")
    return 0


# ---- parser --------------------------------------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser, generating: bool = True) -> None:
    p.add_argument("--out", required=True, help="run directory for scores.json, items.jsonl and friends")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N items (per subject for bench)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--label", default=None, help="name of this run in `ember eval report` (default: the directory name)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    if generating:
        p.add_argument("--max-new-tokens", type=int, default=512, help="answer length limit for generation (greedy)")
        p.add_argument("--adapter", default=None, help="LoRA adapter directory on top of the model")


def register(subparsers) -> None:
    ev = subparsers.add_parser("eval", help="benchmarks, generation metrics, pairwise comparison, reports")
    sub = ev.add_subparsers(dest="eval_command", required=True)

    p = sub.add_parser("bench", help="multiple-choice benchmarks by answer-letter log-likelihood, and GSM8K")
    p.add_argument("--model", default="smollm2-135m-instruct", help="registry name, HF/Ember directory, .gguf or hub id")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=["cmmlu"])
    p.add_argument("--data", action="append", default=[], metavar="[TASK=]PATH",
                   help="local data directory (or hub id) per task; default: the task's hub dataset")
    p.add_argument("--subjects", nargs="+", default=None, help="only these subjects (file stems, e.g. agronomy)")
    p.add_argument("--shots", type=int, default=5, help="k-shot examples from the dev split (0–5)")
    p.add_argument("--prompt-format", choices=("auto", "chat", "plain"), default="auto",
                   help="chat: the tokenizer's chat template; plain: raw text; auto: chat when the tokenizer has one")
    p.add_argument("--device", default="auto")
    _common(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("gen", help="generate answers for a dataset, then BLEU-4 / ROUGE / exact match")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--data", default=None, help="JSON/JSONL/CSV dataset with a prompt and a reference field")
    p.add_argument("--predictions", default=None, help="score this JSONL of {prediction, reference} without generating")
    p.add_argument("--prompt-field", default=None, help="field holding the prompt (default: instruction|input|prompt|question)")
    p.add_argument("--reference-field", default=None, help="field holding the reference (default: target|reference|output|answer)")
    p.add_argument("--lang", choices=("auto", "zh", "en"), default="auto", help="word segmentation for BLEU/ROUGE")
    _common(p)
    p.set_defaults(func=cmd_gen)

    p = sub.add_parser("compare", help="answers of two models on a prompt set, judged pairwise by an LLM")
    p.add_argument("--model-a", required=True, help="the model under test (outcomes are from its side)")
    p.add_argument("--model-b", required=True, help="the model it is compared against")
    p.add_argument("--prompts", required=True, help="Firefly-style .xlsx (kind, instruction) or JSONL {prompt, category, reference?}")
    p.add_argument("--judge", default=None, help="judge model; without it only the answers are generated (for annotate)")
    p.add_argument("--judge-template", default=None, help="Jinja judge prompt (default: ember/evaluation/judge_prompt.jinja)")
    p.add_argument("--judge-mode", choices=("generate", "likelihood"), default="generate",
                   help="generate: the judge writes reasoning and a [[1]]/[[2]]/[[TIE]] mark; likelihood: the most "
                        "likely of the three marks after the prompt (for small local judges that write no mark)")
    _common(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("annotate", help="serve a page to judge a compare run's answer pairs by hand")
    p.add_argument("run", help="a directory written by `ember eval compare`")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--annotator", default="human", help="name stored with each verdict")
    p.add_argument("--seed", type=int, default=0, help="seed of the per-item answer order")
    p.set_defaults(func=cmd_annotate)

    p = sub.add_parser("report", help="runs side by side (base vs tuned) in one markdown file with charts")
    p.add_argument("runs", nargs="+", help="run directories (the first is the baseline for the Δ columns)")
    p.add_argument("--out", required=True, help="report .md file, or a directory for report.md")
    p.add_argument("--labels", nargs="+", default=None, help="one display name per run")
    p.set_defaults(func=cmd_report)


def main(argv: Optional[list[str]] = None) -> int:
    """Standalone entry (`python -m ember.evaluation.cli eval ...`); `ember eval ...` goes through ember.cli."""
    import sys

    parser = argparse.ArgumentParser(prog="ember")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except EmberError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
