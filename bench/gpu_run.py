"""One `ember train` run, measured for bench/gpu_check.sh: steady-state tokens/s, MFU, peak GPU memory, `ember plan`.

    python bench/gpu_run.py --name NAME --out DIR [--fill-memory] [--plan] CONFIG [overrides ...]

Runs `ember.training.run.train` in this process (also under torchrun / accelerate launch: global rank 0 writes
DIR/NAME.json) with a callback that times each optimizer step after a CUDA sync. The first `--warmup` steps are left
out of the rates (allocator growth, kernel autotuning).

Model FLOPs per token (MFU counts no recomputation from gradient checkpointing, as is usual):
  full fine-tuning   6·N + 12·L·d·s
  LoRA / QLoRA       4·N + 6·N_lora + 12·L·d·s    forward 2N; backward 2N for the activations' gradients only,
                                                  since frozen weights get none; LoRA's own matrices 6 per parameter
  N = parameters that multiply activations (every Linear, the output head included; an input embedding is a lookup
  and counts only when tied to the head), N_lora = LoRA A/B parameters, L = layers, d = attention width
  (heads × head_dim), s = mean non-padding tokens per sample; 12·L·d·s is PaLM's attention term (QK^T and AV,
  forward and backward, causal mask not discounted).
MFU = tokens/s × FLOPs per token / peak; peak: $GPU_PEAK_TFLOPS, else the dense bf16 datasheet figure of a known GPU.

--fill-memory picks the largest micro-batch whose predicted peak is at most --fill fraction of the GPU's memory:
`ember plan --json` when that command exists, else the rough estimate in `estimate_peak`. --max-micro-batch caps it
(gpu_check.sh halves it after an out-of-memory failure).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "H800": 989.0, "A100": 312.0, "A800": 312.0, "L40S": 362.0,
               "L4": 121.0, "A10G": 125.0, "RTX 4090": 165.0}  # dense bf16, vendor datasheets (SXM parts)
MICRO_BATCHES = (1, 2, 4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 64)


class StepClock(TrainerCallback):
    """Wall time and tokens seen at the end of every optimizer step, plus the model's FLOP counts."""

    def __init__(self):
        self.marks: list[tuple[float, int]] = []
        self.counts: dict[str, float] = {}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.counts = flop_counts(model)
        self.marks = [(self._now(), state.num_input_tokens_seen or 0)]

    def on_step_end(self, args, state, control, **kwargs):
        self.marks.append((self._now(), state.num_input_tokens_seen or 0))

    @staticmethod
    def _now() -> float:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        return time.perf_counter()


def flop_counts(model) -> dict[str, float]:
    base, lora = 0, 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            n = module.in_features * module.out_features
            if "lora_" in name:
                lora += n
            else:
                base += n
    config = getattr(model, "config", None)
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = getattr(inner, "config", config)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return {"n_matmul": base, "n_lora": lora, "layers": text.num_hidden_layers, "attn_width": heads * head_dim}


def flops_per_token(counts: dict[str, float], seq: float, lora: bool) -> float:
    attention = 12 * counts["layers"] * counts["attn_width"] * seq
    if lora:
        return 4 * counts["n_matmul"] + 6 * counts["n_lora"] + attention
    return 6 * counts["n_matmul"] + attention


def peak_flops() -> float | None:
    if os.environ.get("GPU_PEAK_TFLOPS"):
        return float(os.environ["GPU_PEAK_TFLOPS"]) * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name(0)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def plan_available() -> bool:
    """Whether `ember plan` exists here ($GPU_RUN_PLAN=yes/no, set once by gpu_check.sh, saves asking each run)."""
    if os.environ.get("GPU_RUN_PLAN") in ("yes", "no"):
        return os.environ["GPU_RUN_PLAN"] == "yes"
    done = subprocess.run([sys.executable, "-m", "ember", "plan", "--help"], capture_output=True, text=True)
    return done.returncode == 0


def gpu_bytes() -> int:
    """This GPU's memory; without one (the script's tiny mode on a CPU) an 80 GiB GPU is assumed."""
    return torch.cuda.get_device_properties(0).total_memory if torch.cuda.is_available() else 80 * 2**30


def plan_command(config: str, overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", "ember", "plan", config, *overrides, "--gpus", "1", "--gpu-memory",
            f"{gpu_bytes() / 2**30:.1f}", "--json"]


PLAN_ENV = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}  # a plan is one process, not a rank


def estimate_peak(cfg, micro_batch: int) -> float:
    """Rough peak bytes (no `ember plan`): bf16 weights; full: + bf16 grads and Adam states; activations with
    gradient checkpointing (each layer's input kept, one layer recomputed) and the logits with their fp32 copies."""
    from ember.models.loading import load_config

    c = load_config(cfg.model)
    d, layers, vocab = c.hidden_size, c.num_hidden_layers, c.vocab_size
    ffn = getattr(c, "intermediate_size", 4 * d)
    params = layers * (4 * d * d + 3 * d * ffn) + vocab * d * (1 if c.tie_word_embeddings else 2)
    static = params * (8 if cfg.method.type == "full" else 2.2)
    s = cfg.data.max_length
    per_sample = layers * s * d * 2 + s * (20 * d + 4 * ffn) * 2 + s * vocab * (2 + 4 + 4)
    if not cfg.train.gradient_checkpointing:
        per_sample += layers * s * (20 * d + 4 * ffn) * 2
    return static + micro_batch * per_sample + 3 * 2**30


def choose_micro_batch(config: str, overrides: list[str], fill: float, cap: int,
                       use_plan: bool) -> tuple[int, str, dict | None]:
    """(micro-batch, how it was chosen, `ember plan`'s JSON for it): every candidate is planned at once, each in its
    own process (the planner is CPU work on the meta device)."""
    from ember.config import load_config

    budget = fill * gpu_bytes()
    candidates = [b for b in MICRO_BATCHES if b <= cap] or [1]
    plans: dict[int, dict | None] = {}
    if use_plan:
        procs = {b: subprocess.Popen(plan_command(config, [*overrides, f"train.per_device_train_batch_size={b}"]),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=PLAN_ENV)
                 for b in candidates}
        plans = {b: _plan_json(*proc.communicate()) for b, proc in procs.items()}
    best, source = candidates[0], "smallest candidate"
    for b in candidates:
        plan = plans.get(b)
        if plan and "peak_bytes_per_device" in plan:  # with the allocator's headroom when the plan states it
            peak, how = plan.get("reserved_bytes_per_device", plan["peak_bytes_per_device"]), "ember plan"
        else:
            peak, how = estimate_peak(load_config(config, [*overrides, f"train.per_device_train_batch_size={b}"]), b), \
                "estimate_peak"
        if peak <= budget:
            best, source = b, how
    return best, source, plans.get(best)


def _plan_json(stdout: str, stderr: str) -> dict:
    try:
        return json.loads(stdout[stdout.index("{"):])
    except ValueError:
        return {"error": (stderr or stdout).strip().splitlines()[-1:] or ["no output"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--plan", action="store_true", help="also ask `ember plan --json` for the predicted peak")
    parser.add_argument("--fill-memory", action="store_true", help="choose the micro-batch that fills the GPU")
    parser.add_argument("--fill", type=float, default=0.95,
                        help="fraction of GPU memory --fill-memory aims at (ember plan's figure includes the "
                             "allocator's headroom)")
    parser.add_argument("--max-micro-batch", type=int, default=64)
    parser.add_argument("--oom-retries", type=int, default=0,
                        help="with --fill-memory: after running out of memory, start again (a fresh process) with "
                             "half the micro-batch, at most this many times")
    parser.add_argument("--warmup", type=int, default=2, help="steps left out of the rates")
    parser.add_argument("config")
    args, overrides = parser.parse_known_args()

    from ember.config import load_config
    from ember.training.run import train

    rank0 = int(os.environ.get("RANK", "0")) == 0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    record: dict = {"name": args.name, "overrides": overrides, "status": "started"}
    if os.environ.get("GPU_RUN_OOM"):
        record["out_of_memory_at"] = [int(b) for b in os.environ["GPU_RUN_OOM"].split(",")]
    use_plan = args.plan and rank0 and plan_available()
    plan = None
    if args.fill_memory:
        micro, source, plan = choose_micro_batch(args.config, overrides, args.fill, args.max_micro_batch, use_plan)
        overrides = [*overrides, f"train.per_device_train_batch_size={micro}"]
        record["micro_batch_source"] = source
    cfg = load_config(args.config, overrides)
    record.update(micro_batch=cfg.train.per_device_train_batch_size, max_length=cfg.data.max_length,
                  method=cfg.method.type, gradient_checkpointing=cfg.train.gradient_checkpointing)
    plan_proc = None
    if use_plan and plan is None:  # CPU-only work on the meta device: runs beside the training
        plan_proc = subprocess.Popen(plan_command(args.config, overrides), stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=PLAN_ENV)
    clock = StepClock()
    started = time.perf_counter()
    try:
        result = train(cfg, callbacks=[clock])
        record["status"] = "ok"
        record["final_loss"] = result.metrics.get("train_loss")
    except torch.cuda.OutOfMemoryError as exc:
        record["status"] = "oom"
        record["error"] = str(exc).splitlines()[0][:300]
    except Exception as exc:  # noqa: BLE001 - the record says what failed; the log has the traceback
        record["status"] = "oom" if "out of memory" in str(exc).lower() else "error"
        record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        import traceback

        traceback.print_exc()
    record["wall_s"] = round(time.perf_counter() - started, 1)
    if torch.cuda.is_available():
        record["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        record["peak_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
        record["gpu"] = torch.cuda.get_device_name(0)
    record.update(rates(clock, cfg, args.warmup))
    if plan_proc is not None:
        plan = _plan_json(*plan_proc.communicate())
    if plan is not None:
        if "peak_bytes_per_device" in plan:
            record["plan_peak_gib"] = round(plan["peak_bytes_per_device"] / 2**30, 2)
            record["plan_fits"] = plan.get("fits")
            record["plan_parts_gib"] = {k: round(v / 2**30, 2) for k, v in plan.get("parts", {}).items()}
        else:
            record["plan_error"] = plan.get("error")
    if rank0:
        (out / f"{args.name}.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
        print("gpu_run:", json.dumps(record), flush=True)
    if record["status"] == "oom" and args.fill_memory and args.oom_retries > 0 and record["micro_batch"] > 1:
        smaller = record["micro_batch"] // 2
        print(f"gpu_run: out of memory at micro-batch {record['micro_batch']}; again with at most {smaller}", flush=True)
        os.environ["GPU_RUN_OOM"] = ",".join(filter(None, [os.environ.get("GPU_RUN_OOM"), str(record["micro_batch"])]))
        argv = [a for a in sys.argv[1:]]
        argv = _set_flag(_set_flag(argv, "--max-micro-batch", str(smaller)), "--oom-retries", str(args.oom_retries - 1))
        os.execv(sys.executable, [sys.executable, str(Path(__file__).resolve()), *argv])  # a fresh CUDA context
    return {"ok": 0, "oom": 3}.get(record["status"], 1)


def _set_flag(argv: list[str], flag: str, value: str) -> list[str]:
    if flag in argv:
        i = argv.index(flag)
        return [*argv[:i + 1], value, *argv[i + 2:]]
    return [flag, value, *argv]


def rates(clock: StepClock, cfg, warmup: int) -> dict:
    marks = clock.marks
    if len(marks) < warmup + 3:
        return {"steps_timed": max(len(marks) - 1, 0)}
    (t0, n0), (t1, n1) = marks[warmup], marks[-1]
    steps = len(marks) - 1 - warmup
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rows = steps * cfg.train.per_device_train_batch_size * cfg.train.gradient_accumulation_steps * world
    tokens = n1 - n0
    out = {"steps_timed": steps, "s_per_step": round((t1 - t0) / steps, 4),
           "tokens_per_s": round(tokens / (t1 - t0), 1), "mean_seq": round(tokens / rows, 1) if rows else None}
    if tokens and clock.counts:
        per_token = flops_per_token(clock.counts, tokens / rows, cfg.method.type in ("lora", "qlora"))
        out.update(flops_per_token=per_token, n_matmul=clock.counts["n_matmul"], n_lora=clock.counts["n_lora"])
        peak = peak_flops()
        if peak:
            out["mfu"] = round(tokens / (t1 - t0) * per_token / world / peak, 4)
    return out


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
