"""Validation: `ember plan`'s CPU prediction against the measured peak RSS of real `ember train` runs.

Each configuration trains the embedded SmolLM2-135M-Instruct for a few steps, in its own process, through the same
`ember.training.run.train` that `ember train` calls. The plan's worst case is made real: continued pretraining
(`stage: pt`) on Chinese text cut into full 256-token blocks, so every row is max_length long and every next token
is trained. The child reports two peaks of its resident memory (Linux's VmHWM): over the whole process, and from the
first training step on (the high-water mark is reset through /proc/self/clear_refs when training begins), which is
what the plan predicts. They differ where loading peaks above training: a QLoRA load reads the full-precision
checkpoint through a memory map while it quantizes, and those file pages count in RSS until the load ends (the
kernel can reclaim them; nothing has to fit them). A baseline child runs everything but the model (imports of
torch, transformers, peft, bitsandbytes and Ember, the tokenizer, the processed data) and its peak RSS is
subtracted from both. The prediction is `plan(cfg, CPU)`'s peak, which counts the process memory above that
baseline. Memory is not distorted by CPU load, but the configurations run one at a time so that no two share the
machine's RAM.

Two allocator settings: `default` is what a user gets; with `mmap` the children run with
MALLOC_MMAP_THRESHOLD_=65536, so glibc returns every freed tensor of 64 KiB or more to the system at once and the
peak RSS is the peak of live memory, which is what the plan predicts. The difference is heap memory glibc keeps
after the forward pass's temporaries are freed. Each run's training time, CPU time and page faults show what the
mmap setting costs: every large tensor comes fresh from the kernel.

    python bench/plan_validation.py                  # prints; add --out bench/results/plan_validation.txt to save
    python bench/plan_validation.py --steps 2 --only lora full --allocators default
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TEXT = ROOT / "examples" / "data" / "pretrain_zh.txt"
# name: overrides on top of the shared ones below
CONFIGS = {
    "lora": [],
    "lora+gc": ["train.gradient_checkpointing=true"],
    "lora-top8-packed": ["method.lora_layers=8", "data.packing=true"],
    "qlora": ["method.type=qlora"],
    "qlora+gc": ["method.type=qlora", "train.gradient_checkpointing=true"],
    "full": ["method.type=full"],
    "full+gc": ["method.type=full", "train.gradient_checkpointing=true"],
}


def run_config(name: str, steps: int, output: str):
    from ember.config import load_config, validate

    return validate(load_config(None, [
        "stage=pt", f"data.datasets=[{{path: {TEXT}, format: text, ratio: 3}}]", "data.max_length=256",
        "method.rank=16", "method.alpha=32", "method.targets=all-linear",
        "train.per_device_train_batch_size=4", f"train.max_steps={steps}", "train.learning_rate=1e-4",
        "train.lr_scheduler_type=constant", "train.logging_steps=1", "train.save_strategy=no",
        "train.report_to=none", "train.seed=0", f"output.dir={output}", "output.overwrite=true",
        "output.plot_loss=false", *CONFIGS[name],
    ]))


def child(name: str, steps: int, baseline: bool) -> dict:
    os.environ["EMBER_NO_PROGRESS"] = "1"
    with tempfile.TemporaryDirectory(prefix="ember-plan-") as tmp:
        cfg = run_config(name, steps, tmp)
        if baseline:
            # Everything a run holds but the model: the libraries a run imports, the tokenizer, the data.
            import bitsandbytes  # noqa: F401
            import peft  # noqa: F401
            from transformers import Trainer  # noqa: F401

            from ember.training.prepare import prepare_data
            import ember.training.run  # noqa: F401

            prepare_data(cfg, progress=False)
            return {"maxrss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
        from transformers import TrainerCallback

        from ember.training.run import train

        class ResetPeak(TrainerCallback):
            def on_train_begin(self, *args, **kwargs):
                process["peak"] = _high_water_mark()
                process["usage"] = resource.getrusage(resource.RUSAGE_SELF)
                with open("/proc/self/clear_refs", "w", encoding="ascii") as refs:
                    refs.write("5")  # the high-water mark starts again from the memory in use now

        process: dict = {}
        result = train(cfg, callbacks=[ResetPeak()])
        before, after = process["usage"], resource.getrusage(resource.RUSAGE_SELF)
    # what the allocator setting costs in time: the training loop's seconds, the process's CPU seconds in it (user +
    # system: the page faults of memory that comes fresh from the kernel are system time) and its page faults
    return {"maxrss": max(process["peak"], _high_water_mark()), "training": _high_water_mark(),
            "train_s": result.metrics["train_runtime"],
            "cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
            "faults": after.ru_minflt - before.ru_minflt}


def _high_water_mark() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


ALLOCATORS = {"default": {}, "mmap": {"MALLOC_MMAP_THRESHOLD_": "65536"}}


def measure(name: str, steps: int, allocator: str, baseline: bool = False) -> dict[str, int]:
    cmd = [sys.executable, __file__, "--child", name, "--steps", str(steps)] + (["--baseline"] if baseline else [])
    env = {**os.environ, **ALLOCATORS[allocator]}
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        sys.exit(f"{name} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


def predict(name: str) -> tuple[int, dict]:
    from ember.planning import Target, plan, to_json
    from ember.planning.plan import ram_bytes

    result = plan(run_config(name, 1, tempfile.gettempdir()), Target(False, 1, ram_bytes()), suggest=False)
    return result.memory.peak, to_json(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2, help="optimizer steps (the second has optimizer states)")
    parser.add_argument("--only", nargs="*", choices=list(CONFIGS), default=list(CONFIGS))
    parser.add_argument("--allocators", nargs="*", choices=list(ALLOCATORS), default=list(ALLOCATORS))
    parser.add_argument("--out", default=None, help="also write the table to this file (rewritten after each run)")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--baseline", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.steps, args.baseline)), flush=True)
        return

    from ember.models.loading import resolve_source

    resolve_source("smollm2-135m-instruct")  # convert the GGUF once, outside the measured processes
    gib = 1 << 30
    started = time.time()
    lines = [
        f"ember plan vs measured peak RSS: SmolLM2-135M-Instruct, stage pt, 4 × 256-token blocks, {args.steps} steps",
        f"{platform.machine()} · {os.cpu_count()} cores · torch {__import__('torch').__version__} · "
        f"transformers {__import__('transformers').__version__} · peft {__import__('peft').__version__}",
        "precision as `ember train` resolves it on this CPU: fp32 weights, bf16 autocast where the CPU has "
        "AVX512-BF16 (LoRA, full), fp32 compute for QLoRA (4-bit nf4 base); LoRA r16 on all linear layers",
    ]
    errors: dict[str, list[float]] = {}
    for allocator in args.allocators:
        base = measure(args.only[0], args.steps, allocator, baseline=True)["maxrss"]
        lines += ["", f"allocator {allocator}: baseline (interpreter, libraries, tokenizer, data; no model) "
                      f"{base / gib:.2f} GiB",
                  f"{'config':18s} {'predicted':>10s} {'training':>10s} {'error':>7s} {'process':>9s} {'train s':>8s} "
                  f"{'cpu s':>6s} {'faults':>7s}   largest predicted parts (GiB)"]
        print("\n".join(lines[-2:]), flush=True)
        for name in args.only:
            predicted, detail = predict(name)
            peaks = measure(name, args.steps, allocator)
            measured, process = peaks["training"] - base, peaks["maxrss"] - base
            error = (predicted - measured) / measured
            errors.setdefault(allocator, []).append(abs(error))
            parts = sorted(detail["parts"].items(), key=lambda kv: -kv[1])[:4]
            lines.append(f"{name:18s} {predicted / gib:8.2f} G {measured / gib:8.2f} G {100 * error:+6.1f}% "
                         f"{process / gib:7.2f} G {peaks['train_s']:8.1f} {peaks['cpu_s']:6.1f} "
                         f"{peaks['faults'] / 1e6:6.2f}M   " + ", ".join(f"{k} {v / gib:.2f}" for k, v in parts))
            print(lines[-1], flush=True)
            _write(args.out, lines)
    lines.append("")
    for allocator, errs in errors.items():
        lines.append(f"{allocator}: largest |error| {100 * max(errs):.1f}%, mean |error| "
                     f"{100 * sum(errs) / len(errs):.1f}% over {len(errs)} configs (against the training peak; "
                     "`process`: the whole process's peak, loading included)")
    lines.append("train s: the training loop's wall seconds (all steps, the first included); cpu s: the process's "
                 "user + system CPU seconds in it; faults: its minor page faults (memory first touched)")
    lines.append(f"({time.time() - started:.0f} s in all)")
    print("\n".join(lines[-len(errors) - 2:]))
    _write(args.out, lines)


def _write(out, lines) -> None:
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
