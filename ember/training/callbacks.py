"""Callbacks: loss curve PNG at the end (Ember's metadata goes into every checkpoint through EmberTrainer)."""

from __future__ import annotations

import os
from pathlib import Path

from transformers import TrainerCallback


class LossPlotCallback(TrainerCallback):
    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            plot_loss(state.log_history, Path(args.output_dir) / "loss.png")


def plot_loss(log_history: list[dict], path: Path) -> bool:
    steps = [h["step"] for h in log_history if "loss" in h]
    losses = [h["loss"] for h in log_history if "loss" in h]
    if not steps:
        return False
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, losses, label="train loss")
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True
