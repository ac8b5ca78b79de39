"""Benchmark: the chunked cross-entropy of a frozen float32 head on a CPU, chunk path vs online (block) path.

Ember's loss projects only the trained tokens' last hidden states to the vocabulary (ember.training.chunked_loss).
The chunk path writes each chunk's [rows, vocabulary] logits (170 rows of a 49k vocabulary: 33 MB, past the cache),
then max-shifts, exponentiates and sums them in further passes and multiplies the gradient back through the head.
The online path, which a frozen fp32 head on a CPU takes (LoRA, the default), runs each block of 1024 rows against
1024 vocabulary columns through all of that while the block is in cache, with a running maximum (flash attention's
online softmax). Forward + backward of the loss for `rows` trained tokens, each path's loss checked against the
other's; the FLOPs are the two matrix products (4 x rows x hidden x vocabulary). Shapes: SmolLM2-135M's head (49152
x 576, the embedded default) and Qwen2.5-0.5B's (151936 x 896), random weights (speed does not depend on values).
Interleaved, best of `--repeats` per cell; the load average is printed beside.

    python bench/loss_blocks.py                                   # prints
    python bench/loss_blocks.py --out bench/results/loss_blocks.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import torch

from common import finish_table
from ember.training.chunked_loss import linear_cross_entropy

SHAPES = {"SmolLM2-135M": (49152, 576), "Qwen2.5-0.5B": (151936, 896)}
# trained tokens per step: a SmolLM2 LoRA step of the peers bench trains ~700 (4 conversations); 2048 = 4 x 512 all trained
ROWS = {"SmolLM2-135M": (256, 1024, 2048), "Qwen2.5-0.5B": (256, 1024)}


def one_pass(weight: torch.Tensor, rows: int, online: bool, iterations: int) -> tuple[float, float]:
    """(mean seconds of forward + backward, the loss)."""
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(rows, weight.size(1), generator=generator).requires_grad_()
    targets = torch.randint(0, weight.size(0), (rows,), generator=generator)
    scale = torch.full((rows,), 1.0 / rows)

    def step() -> float:
        hidden.grad = None
        loss = linear_cross_entropy(hidden, weight, targets, scale, torch.float32, online=online)
        loss.backward()
        return loss.item()

    loss = step()
    start = time.perf_counter()
    for _ in range(iterations):
        step()
    return (time.perf_counter() - start) / iterations, loss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", help="also write the table here")
    args = parser.parse_args()
    start_load = os.getloadavg()
    lines = ["# loss_blocks: chunked cross-entropy forward + backward, frozen fp32 head on a CPU, chunk vs online path "
             "(bench/loss_blocks.py)",
             f"# machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
             f"{torch.get_num_threads()} threads; recorded {time.strftime('%Y-%m-%dT%H:%M')}",
             f"# best of {args.repeats} interleaved repeats; load average at start "
             f"{', '.join(f'{x:.2f}' for x in start_load)}",
             "", f"{'head':<14}{'rows':>6}  {'chunk ms':>9}  {'GFLOP/s':>7}  {'online ms':>9}  {'GFLOP/s':>7}  "
                 f"{'chunk / online':>14}  {'loss diff':>9}  load"]
    for name, (vocab, hidden_size) in SHAPES.items():
        weight = torch.randn(vocab, hidden_size, generator=torch.Generator().manual_seed(0)) * 0.02
        for rows in ROWS[name]:
            flops = 4 * rows * hidden_size * vocab
            iterations = max(1, int(2e10 // flops))
            timings = {False: [], True: []}
            losses = {}
            for _ in range(args.repeats):
                for online in (False, True):
                    seconds, losses[online] = one_pass(weight, rows, online, iterations)
                    timings[online].append(seconds)
            chunk, online = min(timings[False]), min(timings[True])
            lines.append(f"{name:<14}{rows:>6}  {chunk * 1e3:>9.1f}  {flops / chunk / 1e9:>7.1f}  {online * 1e3:>9.1f}  "
                         f"{flops / online / 1e9:>7.1f}  {chunk / online:>13.2f}x  "
                         f"{abs(losses[True] - losses[False]) / losses[False]:>9.1e}  {os.getloadavg()[0]:.2f}")
            print(lines[-1], flush=True)
    finish_table(lines, args.out)


if __name__ == "__main__":
    main()
