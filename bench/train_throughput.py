"""Benchmark: `ember train` throughput of LoRA, QLoRA (nf4) and full fine-tuning on SmolLM2-135M-Instruct.

`lora-top8` is LoRA in the top 8 of the 30 layers only (`method.lora_layers: 8`, the quickstart's setting). A last
section times one LoRA forward + backward on a packed batch with logits at the trained positions only (what Ember
does) against logits at every position (what a plain `model(labels=...)` does), in one process.

Each method runs in its own process (so its peak RSS is its own) through the same `ember.training.run.train` that
`ember train` calls, with each method's default precision, on examples/data/quickstart.jsonl: batch 4, max_length
256, the same seed and so the same batches for every method. The first step (allocations, lazy init) is dropped;
the rest give seconds per step (median) and non-padding tokens per second. Printed with ratios against LoRA from
the same run. Measured, not asserted: on a shared machine the load average (printed) moves these numbers a lot;
with another busy process on a 2-core machine, OpenMP's default spin-waiting made steps up to ~10x slower here, and
`OMP_WAIT_POLICY=PASSIVE` (inherited by the child processes) avoided most of that.

    python bench/train_throughput.py                 # prints; add --out bench/results/train_throughput.txt to save
    python bench/train_throughput.py --steps 3 --methods lora full
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("lora", "lora-top8", "qlora", "full")
DATA = ROOT / "examples" / "data" / "quickstart.jsonl"


def run_config(method: str, steps: int, output: str):
    from ember.config import load_config

    kind, _, top = method.partition("-top")
    return load_config(None, [
        f"data.datasets=[{{path: {DATA}}}]", "data.max_length=256", "data.shuffle=true",
        f"method.type={kind}", *([f"method.lora_layers={top}"] if top else []), "method.rank=16", "method.alpha=32", "method.targets=all-linear",
        "train.per_device_train_batch_size=4", f"train.max_steps={steps}", "train.learning_rate=1e-4",
        "train.lr_scheduler_type=constant", "train.logging_steps=1", "train.save_strategy=no",
        "train.report_to=none", "train.seed=0", f"output.dir={output}", "output.overwrite=true",
    ])


def child(method: str, steps: int) -> dict:
    """One method, in this process: time every optimizer step and count its non-padding tokens."""
    import torch
    from transformers import TrainerCallback

    from ember.training.run import train

    class Clock(TrainerCallback):
        def __init__(self):
            self.marks: list[tuple[float, int]] = []

        def on_step_begin(self, args, state, control, **kwargs):
            if not self.marks:
                self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

        def on_step_end(self, args, state, control, **kwargs):
            self.marks.append((time.perf_counter(), state.num_input_tokens_seen))

    clock = Clock()
    with tempfile.TemporaryDirectory(prefix="ember-bench-") as out:
        cfg = run_config(method, steps + 1, out)  # + the warm-up step
        result = train(cfg, callbacks=[clock])
        precision = "bf16 autocast" if _bf16(out) else "fp32"
    seconds = [b[0] - a[0] for a, b in zip(clock.marks, clock.marks[1:], strict=False)]
    measured = clock.marks[1:]  # from the end of the warm-up step
    tokens = measured[-1][1] - measured[0][1]
    return {
        "method": method,
        "precision": precision + (" (nf4 weights)" if method == "qlora" else ""),
        "steps": len(seconds) - 1,
        "s_per_step": statistics.median(seconds[1:]),
        "tokens_per_s": tokens / (measured[-1][0] - measured[0][0]),
        "tokens_per_step": tokens / (len(measured) - 1),
        "first_step_s": seconds[0],
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2,
        "trainable": result.trainable_params,
        "total": result.total_params,
        "threads": torch.get_num_threads(),
    }


def logits_child(repeats: int = 3) -> dict:
    """LoRA forward + backward on one packed batch of 4 samples: logits at trained positions vs at all positions."""
    import torch

    from ember.training.prepare import prepare_data
    from ember.data.collate import PackedCollator
    from ember.models.adapters import apply_method
    from ember.models.loading import detect_family, load_model, load_tokenizer
    from ember.training.losses import causal_lm_loss, trained_positions

    with tempfile.TemporaryDirectory(prefix="ember-bench-") as out:
        cfg = run_config("lora", 1, out)
        samples = prepare_data(cfg, progress=False).data.train[:4]
    batch = PackedCollator()([{"input_ids": s.input_ids, "labels": s.labels} for s in samples])
    tokenizer = load_tokenizer(cfg.model)
    model = load_model(cfg.model, vocab_size=len(tokenizer))
    model.config.use_cache = False
    model = apply_method(model, cfg.method, detect_family(model.config.model_type))
    model.train()
    positions = trained_positions(batch["labels"])
    inputs = {"input_ids": batch["input_ids"], "position_ids": batch["position_ids"]}

    def step(keep: bool) -> float:
        start = time.perf_counter()
        if keep:
            loss = causal_lm_loss(model(**inputs, logits_to_keep=positions).logits, batch["labels"], positions=positions)
        else:
            loss = causal_lm_loss(model(**inputs).logits, batch["labels"])
        loss.backward()
        model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step(True)  # warm-up
    times = {"all": [], "trained": []}
    for _ in range(repeats):  # interleaved, so a change in machine load hits both alike
        times["all"].append(step(False))
        times["trained"].append(step(True))
    return {"tokens": int(batch["input_ids"].numel()), "kept": int(positions.numel()),
            "all_s": statistics.median(times["all"]), "trained_s": statistics.median(times["trained"])}


def _bf16(output_dir: str) -> bool:
    import torch

    args = torch.load(Path(output_dir) / "training_args.bin", weights_only=False)
    return bool(args.bf16)


def measure(method: str, steps: int) -> dict:
    env = {**os.environ, "EMBER_NO_PROGRESS": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, __file__, "--child", method, "--steps", str(steps)], env=env,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        sys.exit(f"{method} failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def report(rows: list[dict], steps: int, wall: float) -> str:
    import torch
    import transformers

    logits = next((r for r in rows if r["method"] == "logits"), None)
    rows = [r for r in rows if r["method"] != "logits"]
    base = next((r for r in rows if r["method"] == "lora"), rows[0])
    lines = [
        "# ember train throughput: SmolLM2-135M-Instruct, batch 4, max_length 256, examples/data/quickstart.jsonl",
        f"# {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"transformers {transformers.__version__}; load average before: {LOAD_BEFORE}, after: "
        f"{', '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"# {steps} measured steps per method after 1 warm-up step; LoRA/QLoRA r16 alpha32 all-linear; "
        f"{rows[0]['threads']} torch threads, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}; "
        f"wall time {wall:.0f} s",
        "",
        f"{'method':9} {'precision':26} {'trainable':>12} {'s/step':>8} {'tok/s':>8} {'tok/step':>8} "
        f"{'peak RSS':>9} {'step vs LoRA':>13} {'tok/s vs LoRA':>14} {'RSS vs LoRA':>12}",
    ]
    for r in rows:
        lines.append(
            f"{r['method']:9} {r['precision']:26} {r['trainable']:>12,} {r['s_per_step']:>8.2f} "
            f"{r['tokens_per_s']:>8.1f} {r['tokens_per_step']:>8.0f} {r['peak_rss_gb']:>7.2f}GB "
            f"{r['s_per_step'] / base['s_per_step']:>12.2f}x {r['tokens_per_s'] / base['tokens_per_s']:>13.2f}x "
            f"{r['peak_rss_gb'] / base['peak_rss_gb']:>11.2f}x"
        )
    lines += ["", "tok = non-padding input tokens (prompt + answer). First (warm-up) step, s: "
              + ", ".join(f"{r['method']} {r['first_step_s']:.1f}" for r in rows)]
    if logits:
        lines += ["", f"# logits: one LoRA forward + backward on a packed batch of {logits['tokens']} tokens, "
                  f"{logits['kept']} of them predicting a trained token (median of 3, interleaved)",
                  f"logits at every position    {logits['all_s']:6.2f} s",
                  f"logits at trained positions {logits['trained_s']:6.2f} s   "
                  f"{logits['all_s'] / logits['trained_s']:.2f}x faster"]
    return "\n".join(lines)


LOAD_BEFORE = ", ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="measured steps per method (after 1 warm-up step)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--out", help="also write the report to this file")
    parser.add_argument("--no-logits", action="store_true", help="skip the logits-at-trained-positions timing")
    parser.add_argument("--child", choices=(*METHODS, "logits"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child == "logits":
        print("RESULT " + json.dumps({"method": "logits", **logits_child()}), flush=True)
        return
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.steps)), flush=True)
        return
    start = time.perf_counter()
    rows = []
    for method in args.methods:
        print(f"running {method} ...", file=sys.stderr, flush=True)
        rows.append(measure(method, args.steps))
    if not args.no_logits:
        print("running logits ...", file=sys.stderr, flush=True)
        rows.append(measure("logits", args.steps))
    text = report(rows, args.steps, time.perf_counter() - start)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
