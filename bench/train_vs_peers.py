"""Benchmark: LoRA training speed side by side — Ember vs LLaMA-Factory vs TRL, each at its default and packed.

The same run for every tool: SmolLM2-135M-Instruct (the embedded default; the directory Ember converts its GGUF into
is handed to the peers), the same real Chinese conversations — the first 96 of ShareGPT-zh
(sft/medicalgpt/sharegpt_zh_1K_format.jsonl) whose whole rendering fits in max length, so that no tool truncates or
drops anything — LoRA r16 / alpha 32 on all linear layers, dropout 0, batch 4, max length 512, 1 epoch, learning
rate 1e-4 constant, seed 0, no gradient checkpointing, no evaluation, no checkpoints. Precision is the same for all:
bf16 autocast where the CPU has avx512_bf16 (LLaMA-Factory's `bf16: true` also loads the frozen weights in bf16 —
its own design), else fp32.

Configurations (`--configs`):
- `ember`: Ember's default (`data.packing` auto: padding-free for this text model, each sample attending to
  itself through causal SDPA); `ember-padded`: `data.packing=false` (padded rows); `ember-packed`:
  `data.packing=true` (the same as the default here); `ember-peft-layers`: the default with `method.fused=false`
  (peft's own LoRA layers instead of Ember's fused ones: the fused layers' share of the speed);
- `llamafactory`: LLaMA-Factory's default (padded); `llamafactory-neat`: `neat_packing: true` (samples packed into
  rows of cutoff_len with a block-diagonal 4D attention mask: its packing without cross-contamination);
- `trl`: TRL's default (padded; loss on every token: SmolLM2's template has no `{% generation %}` markers for
  `assistant_only_loss`); `trl-padfree`: `padding_free=True` (the batch flattened into one row; TRL 1.16 accepts it
  without packing only with `max_length=None`, which loses nothing here); `trl-packing`:
  `packing=True` (BFD packing into rows of max_length, padding-free).
TRL's `gradient_checkpointing` default (True) and LLaMA-Factory's (on unless `disable_gradient_checkpointing`) are
turned off as Ember's is: checkpointing made a SmolLM2 LoRA step ~6x slower on this CPU (../shared/notes/cpu-stack.md).

Seconds are each trainer's `train_runtime` (the `Trainer.train` loop: batches, forward, backward, optimizer; not
model loading or data preparation). Tokens/s divide ONE count by them: the conversations' tokens under SmolLM2's
own chat template (every tool trains on the same conversations; templates differ by a token or so). Peak RSS is
the child process's. Runs are interleaved (A, B, C, A, B, C, ...) from one driver, each in its own process
(bench/peers.py: venvs, OMP_WAIT_POLICY=PASSIVE, load average beside every run).

    python bench/train_vs_peers.py --quick      # smoke test: 8 conversations (2 steps), every configuration, 1 round
    python bench/train_vs_peers.py              # full: 96 conversations, 9 configurations, 1 round
    python bench/train_vs_peers.py --record     # the same, also written to bench/results/train_vs_peers.txt
    python bench/train_vs_peers.py --configs ember trl-padfree --repeats 2

The first run builds the peer venvs (bench/peers.py; ~6 + ~4 minutes, needs the package index); later runs reuse them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import peers  # noqa: E402  (stdlib only: children in the peer venvs import it too)
from data_vs_peers import lf_dataset_dir, read_records, reference_tokens, to_messages, write_records  # noqa: E402

DATA = "sft/medicalgpt/sharegpt_zh_1K_format.jsonl"
CONFIGS = {  # label → (tool, mode: how the tool batches, or for ember-peft-layers which LoRA layers train)
    "ember": ("ember", "default"),
    "ember-padded": ("ember", "none"),
    "ember-packed": ("ember", "packed"),
    "ember-peft-layers": ("ember", "peft-layers"),
    "llamafactory": ("llamafactory", "none"),
    "llamafactory-neat": ("llamafactory", "neat"),
    "trl": ("trl", "none"),
    "trl-padfree": ("trl", "padfree"),
    "trl-packing": ("trl", "packing"),
}
HYPER = {"rank": 16, "alpha": 32, "dropout": 0.0, "batch": 4, "lr": 1e-4, "seed": 0}


# -------------------------------------------------------------------------------------------------- children


def _result(metrics: dict, clock) -> None:
    runtime = metrics["train_runtime"]
    peers.child_result(seconds=runtime, steps=round(metrics.get("train_steps_per_second", 0) * runtime),
                       loss=metrics.get("train_loss"), **clock.summary())


def child_ember(a) -> None:
    tmp = peers.child_tmp()
    from ember.config import load_config, validate
    from ember.training.run import train

    cfg = validate(load_config(None, [
        f"model.name_or_path={a.model}", f"data.datasets=[{{path: {a.data}}}]", f"data.max_length={a.max_length}",
        *([f"data.packing={'true' if a.mode == 'packed' else 'false'}"] if a.mode in ("packed", "none") else []),
        *(["method.fused=false"] if a.mode == "peft-layers" else []),
        "data.cache=false",
        "method.type=lora", f"method.rank={HYPER['rank']}", f"method.alpha={HYPER['alpha']}",
        f"method.dropout={HYPER['dropout']}", "method.targets=all-linear",
        f"train.per_device_train_batch_size={HYPER['batch']}", f"train.num_train_epochs={a.epochs}",
        f"train.max_steps={a.max_steps}", f"train.learning_rate={HYPER['lr']}", "train.lr_scheduler_type=constant",
        "train.logging_steps=5", "train.save_strategy=no", "train.report_to=none", f"train.seed={HYPER['seed']}",
        f"train.bf16={'true' if a.bf16 else 'false'}", "train.gradient_checkpointing=false",
        f"output.dir={tmp / 'run'}", "output.overwrite=true", "output.plot_loss=false",
    ]))
    clock = peers.step_clock()
    result = train(cfg, callbacks=[clock])
    _result(result.metrics, clock)


def child_llamafactory(a) -> None:
    tmp = peers.child_tmp()
    data_dir = lf_dataset_dir(tmp, a.data, "sharegpt")
    from llamafactory.train.tuner import run_exp

    out = tmp / "out"
    clock = peers.step_clock()
    run_exp({
        "model_name_or_path": a.model, "stage": "sft", "do_train": True, "finetuning_type": "lora",
        "lora_rank": HYPER["rank"], "lora_alpha": HYPER["alpha"], "lora_dropout": HYPER["dropout"],
        "lora_target": "all",
        "dataset": "bench", "dataset_dir": str(data_dir), "cutoff_len": a.max_length,
        "template": None if a.template == "none" else a.template,
        "overwrite_cache": True, "neat_packing": a.mode == "neat",
        "output_dir": str(out), "per_device_train_batch_size": HYPER["batch"], "num_train_epochs": a.epochs,
        "max_steps": a.max_steps, "learning_rate": HYPER["lr"], "lr_scheduler_type": "constant", "logging_steps": 5,
        "save_strategy": "no", "report_to": "none", "seed": HYPER["seed"], "bf16": a.bf16, "use_cpu": True,
        "disable_gradient_checkpointing": True, "plot_loss": False,
    }, callbacks=[clock])
    _result(json.loads((out / "train_results.json").read_text()), clock)


def child_trl(a) -> None:
    tmp = peers.child_tmp()
    import torch
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    tokenizer = AutoTokenizer.from_pretrained(a.model)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    raw = load_dataset("json", data_files=a.data, split="train")
    # TRL reads ChatML `messages`; its own ShareGPT conversion keeps the roles human/gpt
    dataset = raw.map(lambda r: {"messages": to_messages(r, "sharegpt")}, remove_columns=raw.column_names)
    # TRL refuses padding_free without packing unless max_length=None ("max_length is not enforced"); every
    # conversation here fits in max_length (see `select`), so that loses nothing.
    args = SFTConfig(
        output_dir=str(tmp / "out"), max_length=None if a.mode == "padfree" else a.max_length,
        packing=a.mode == "packing",
        padding_free=a.mode in ("padfree", "packing"), per_device_train_batch_size=HYPER["batch"],
        num_train_epochs=a.epochs, max_steps=a.max_steps, learning_rate=HYPER["lr"], lr_scheduler_type="constant",
        logging_steps=5, save_strategy="no", report_to="none", seed=HYPER["seed"], bf16=a.bf16, use_cpu=True,
        gradient_checkpointing=False,
    )
    peft_config = LoraConfig(r=HYPER["rank"], lora_alpha=HYPER["alpha"], lora_dropout=HYPER["dropout"],
                             target_modules="all-linear", task_type="CAUSAL_LM")
    clock = peers.step_clock()
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=peft_config, callbacks=[clock])
    _result(trainer.train().metrics, clock)


CHILDREN = {"ember": child_ember, "llamafactory": child_llamafactory, "trl": child_trl}


# ---------------------------------------------------------------------------------------------------- driver


def select(records: list[dict], count: int, max_length: int, tokenizer, margin: int = 16) -> list[dict]:
    """The first `count` conversations with a final answer whose whole rendering fits, with room for the small
    differences between the tools' templates (LLaMA-Factory's smollm2 system prompt ends with a period)."""
    chosen = []
    for record in records:
        msgs = to_messages(record, "sharegpt")
        if msgs is None or any(m["role"] not in ("user", "assistant") for m in msgs):
            continue
        text = tokenizer.apply_chat_template(msgs, tokenize=False)
        if len(tokenizer(text, add_special_tokens=False)["input_ids"]) <= max_length - margin:
            chosen.append(record)
            if len(chosen) == count:
                return chosen
    raise SystemExit(f"only {len(chosen)} conversations fit in {max_length} tokens; {count} asked")


def report(rows: list[dict], ref: dict, runs, args, precision: str) -> str:
    lines = [
        "# train_vs_peers: LoRA training speed, Ember vs LLaMA-Factory vs TRL (bench/train_vs_peers.py)",
        *peers.machine_lines(),
        "# tools:",
        *peers.versions_lines(sorted({r["tool"] for r in rows}, key=["ember", "llamafactory", "trl"].index)),
        f"# SmolLM2-135M-Instruct, LoRA r{HYPER['rank']} alpha {HYPER['alpha']} all-linear dropout 0, batch "
        f"{HYPER['batch']}, max length {args.max_length}, "
        + (f"{args.max_steps} steps" if args.max_steps > 0 else f"{args.epochs:g} epoch") +
        f", lr {HYPER['lr']} constant, no gradient checkpointing, {precision}; {args.repeats} interleaved round(s)"
        + ("; QUICK (smoke test sizes)" if args.quick else ""),
        f"# data: the first {ref['conversations']} ShareGPT-zh conversations that fit in {args.max_length} tokens "
        f"({ref['multi']} of them multi-round; {ref['rounds']:.1f} rounds avg, max {ref['max_rounds']}); "
        f"{ref['tokens']:,} tokens under SmolLM2's chat "
        "template (the count every row's tokens/s uses)",
        "",
        f"{'configuration':18} {'steps':>5} {'train s':>8} {'wall s':>7} {'tokens/s':>9} {'1st step':>8} "
        f"{'step s':>7} {'peak RSS':>9} {'loss':>7} {'vs fastest peer':>15}",
    ]
    for r in rows:
        res = r["result"]
        loss = f"{res['loss']:.4f}" if res.get("loss") is not None else "-"
        first, step = (f"{res[k]:.2f}" if res.get(k) is not None else "-" for k in ("first_step_s", "step_s"))
        lines.append(f"{r['label']:18} {res['steps']:>5} {r['seconds']:>8.1f} {r['wall_s']:>7.1f} "
                     f"{ref['tokens'] / r['seconds']:>9.1f} {first:>8} {step:>7} "
                     f"{r['rss_gb']:>7.2f}GB {loss:>7} {r['vs_peer']:>14.2f}x")
    fastest = rows[0]["fastest_peer"]
    lines += [
        "",
        "train s: median over rounds of the trainer's train_runtime (the training loop only). wall s: the whole child "
        "process (imports, model load, data preparation, saving the adapter). 1st step: the first optimizer step "
        "(one-time costs); step s: the median of the later steps (last round).",
        f"tokens/s: {ref['tokens']:,} / train s for every row. vs fastest peer: train s of the fastest peer "
        f"configuration ({fastest}) / this row's (>1: faster). loss: the trainer's mean training loss (LLaMA-Factory "
        "also trains the newline after <|im_end|>; TRL trains every token).",
        *peers.runs_section(runs),
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: 8 conversations, 1 round")
    parser.add_argument("--record", action="store_true", help="also write bench/results/train_vs_peers.txt")
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--conversations", type=int, help="how many conversations (default 96; --quick 8)")
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--epochs", type=float, default=1.0)
    parser.add_argument("--max-steps", type=int, default=-1,
                        help="a fixed step count for every tool (overrides epochs)")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds (default 1)")
    parser.add_argument("--precision", choices=("auto", "bf16", "fp32"), default="auto",
                        help="auto: bf16 autocast when the CPU has avx512_bf16, else fp32 (the same for every tool)")
    parser.add_argument("--lf-template", default="smollm2",
                        help="LLaMA-Factory template (default smollm2; none: it parses the tokenizer's own)")
    parser.add_argument("--child", choices=list(CHILDREN), help=argparse.SUPPRESS)
    for name in ("--data", "--model", "--mode", "--template"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("--bf16", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.bf16 = bool(args.bf16)
        CHILDREN[args.child](args)
        return
    if args.quick and args.record:
        parser.error("--quick runs are smoke tests: they are not recorded")
    count = args.conversations or (8 if args.quick else 96)
    bf16 = args.precision == "bf16" or (args.precision == "auto" and peers.has_avx512_bf16())
    precision = "bf16 autocast" if bf16 else "fp32"

    sys.path.insert(0, str(peers.ROOT))
    from common import shared_data
    from transformers import AutoTokenizer

    from ember.models.loading import resolve_source

    model = resolve_source("smollm2-135m-instruct")
    tokenizer = AutoTokenizer.from_pretrained(model)
    records = select(read_records(shared_data() / DATA), count, args.max_length, tokenizer)
    ref = reference_tokens(records, "sharegpt", tokenizer)
    for tool in sorted({CONFIGS[c][0] for c in args.configs} - {"ember"}):
        peers.ensure_venv(tool)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ember-train-vs-peers-") as work:
        data = Path(work) / "conversations.jsonl"
        write_records(records, data, "sharegpt")
        jobs = []
        for label in args.configs:
            tool, mode = CONFIGS[label]
            jobs.append(peers.Job(label, tool, [
                str(Path(__file__).resolve()), "--child", tool, "--data", str(data), "--model", model, "--mode", mode,
                "--template", args.lf_template, "--bf16", str(int(bf16)), "--max-length", str(args.max_length),
                "--epochs", str(args.epochs), "--max-steps", str(args.max_steps)], "train"))
        runs, rows = peers.measure("train-vs-peers", jobs, args.repeats)
    peers.publish("train_vs_peers", report(rows, ref, runs, args, precision), start, args.record)


if __name__ == "__main__":
    main()
