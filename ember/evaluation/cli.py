"""`ember eval bench|gen|compare|annotate|report`: parse the arguments and call one function each."""

from __future__ import annotations

import argparse
from pathlib import Path

from ember.config.schema import DEFAULT_MODEL
from ember.core.ports import check_port
from ember.evaluation.runs import TASKS, EvalSettings


def _settings(args, generating: bool = True) -> EvalSettings:
    from ember.inference.cli import check_generation_args

    check_generation_args(args)  # --max-new-tokens: the range chat and serve accept
    return EvalSettings(out=args.out, limit=args.limit, seed=args.seed, batch_size=args.batch_size, label=args.label,
                        progress=not args.no_progress, max_new_tokens=getattr(args, "max_new_tokens", 512),
                        history_max_tokens=getattr(args, "history_max_tokens", None),
                        adapter=getattr(args, "adapter", None))


def cmd_bench(args) -> int:
    from ember.evaluation.runs import run_bench

    run_bench(args.model, args.tasks, _settings(args), data=args.data, subjects=args.subjects, shots=args.shots,
              prompt_format=args.prompt_format, device=args.device)
    return 0


def cmd_gen(args) -> int:
    from ember.evaluation.runs import run_gen

    run_gen(args.model, _settings(args), data=args.data, predictions=args.predictions, prompt_field=args.prompt_field,
            reference_field=args.reference_field, lang=args.lang)
    return 0


def cmd_compare(args) -> int:
    from ember.evaluation.runs import run_compare

    run_compare(args.model_a, args.model_b, args.prompts, _settings(args), judge=args.judge,
                judge_template=args.judge_template, judge_mode=args.judge_mode)
    return 0


def cmd_annotate(args) -> int:
    from ember.evaluation.annotate import serve

    check_port(args.port)
    return serve(Path(args.run), args.host, args.port, args.annotator, args.seed)


def cmd_report(args) -> int:
    from ember.evaluation.report import write_report

    print(f"wrote {write_report([Path(r) for r in args.runs], Path(args.out), args.labels)}")
    return 0


# ---- parser --------------------------------------------------------------------------------------------------------

def _common(p: argparse.ArgumentParser, generating: bool = True) -> None:
    p.add_argument("--out", required=True, help="run directory for scores.json, items.jsonl and friends")
    p.add_argument("--limit", type=int, default=None,
                   help="evaluate N items (bench: the first N per subject; gen/compare: drawn across categories)")
    p.add_argument("--seed", type=int, default=0, help="which items --limit draws (gen, compare)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--label", default=None, help="name of this run in `ember eval report` (default: the directory name)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    if generating:
        p.add_argument("--max-new-tokens", type=int, default=512, help="answer length limit for generation (greedy)")
        p.add_argument("--history-max-tokens", type=int, default=None,
                       help="prompt budget for multi-turn records: the oldest rounds are dropped first, as in chat")
        p.add_argument("--adapter", default=None, help="LoRA adapter directory on top of the model")


def register(subparsers) -> None:
    ev = subparsers.add_parser("eval", help="benchmarks, generation metrics, pairwise comparison, reports")
    sub = ev.add_subparsers(dest="eval_command", required=True)

    p = sub.add_parser("bench", help="multiple-choice benchmarks by answer-letter log-likelihood, and GSM8K")
    p.add_argument("--model", default=DEFAULT_MODEL, help="registry name, HF/Ember directory, .gguf or hub id")
    p.add_argument("--tasks", nargs="+", choices=TASKS, default=["cmmlu"])
    p.add_argument("--data", action="append", default=[], metavar="[TASK=]PATH",
                   help="local data directory (or hub id) per task; default: the task's hub dataset")
    p.add_argument("--subjects", nargs="+", default=None, help="only these subjects (file stems, e.g. agronomy)")
    p.add_argument("--shots", type=int, default=5, help="k-shot examples from the dev split (0–5)")
    p.add_argument("--prompt-format", choices=("auto", "chat", "plain", "lm-eval-chat"), default="auto",
                   help="chat: the run's chat template (as `ember chat` sends it); plain: raw text; lm-eval-chat: "
                        "lm-evaluation-harness's --apply_chat_template --fewshot_as_multiturn layout, for numbers "
                        "comparable with it; auto: chat when the model has a template")
    p.add_argument("--device", default="auto")
    _common(p)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("gen", help="generate answers for a dataset, then BLEU-4 / ROUGE / exact match")
    p.add_argument("--model", default=DEFAULT_MODEL)
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
