"""Benchmark: one causal sample's SDPA forward + backward on a CPU under bf16 autocast, run in bf16 vs in float32.

Ember's padding-free training attends one sample at a time (ember.models.segment_attention), and on a CPU it does
so in float32 with autocast off, because there PyTorch's bf16 flash attention is no faster than its float32 one
and the casts around it cost extra. The inputs are what a Llama-style layer hands attention under bf16 autocast:
q and k in float32 (the rotary embedding multiplies the bf16 projections by float32 cos/sin, as transformers
computes them from the float32 hidden states) and v in bf16. `autocast bf16` is SDPA as transformers calls it
under autocast (which casts q, k, v to bf16); `float32` is what Ember runs (v upcast, autocast off). SmolLM2-135M's
shape: 9 query heads, 3 key/value heads, head dim 64, `enable_gqa`. Interleaved, best of `--repeats` per cell; the
load average is printed beside. Measured in a whole LoRA step, the change took 5% off (ember.models.segment_attention).

    python bench/attention_dtype.py                          # prints
    python bench/attention_dtype.py --out bench/results/attention_dtype.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch
import torch.nn.functional as F

from common import finish_table

HEADS, KV_HEADS, HEAD_DIM = 9, 3, 64


def one_pass(length: int, upcast: bool, iterations: int) -> float:
    """Mean seconds of forward + backward, q/k/v laid out as transformers hands them to attention ([1, heads, T, d]
    views of a [1, T, heads, d] projection)."""
    torch.manual_seed(0)

    def make(heads: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.randn(1, length, heads, HEAD_DIM, dtype=dtype).transpose(1, 2).requires_grad_()

    q, k, v = make(HEADS, torch.float32), make(KV_HEADS, torch.float32), make(KV_HEADS, torch.bfloat16)
    grad = torch.randn(1, HEADS, length, HEAD_DIM)

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            if upcast:
                with torch.autocast("cpu", enabled=False):
                    out = F.scaled_dot_product_attention(q, k, v.float(), is_causal=True, enable_gqa=True)
            else:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        out.float().backward(grad)

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    return (time.perf_counter() - start) / iterations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 128, 256, 384, 512])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args()
    start_load = os.getloadavg()
    lines = ["# attention_dtype: causal SDPA forward + backward of one sample on a CPU, autocast bf16 vs float32 (bench/attention_dtype.py)",
             f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; recorded {time.strftime('%Y-%m-%dT%H:%M')}",
             f"# shape: SmolLM2-135M attention ({HEADS} heads, {KV_HEADS} kv heads, dim {HEAD_DIM}), enable_gqa; best of "
             f"{args.repeats} interleaved repeats; load average at start {', '.join(f'{x:.2f}' for x in start_load)}",
             "", f"{'tokens':>6}  {'autocast bf16 ms':>16}  {'float32 ms':>10}  {'bf16 / float32':>14}  load"]
    for length in args.lengths:
        iterations = max(5, 4000 // length)
        bf16, fp32 = [], []
        for _ in range(args.repeats):
            bf16.append(one_pass(length, False, iterations))
            fp32.append(one_pass(length, True, iterations))
        lines.append(f"{length:>6}  {min(bf16) * 1e3:>16.2f}  {min(fp32) * 1e3:>10.2f}  {min(bf16) / min(fp32):>13.2f}x  "
                     f"{os.getloadavg()[0]:.2f}")
    finish_table(lines, args.out)


if __name__ == "__main__":
    main()
