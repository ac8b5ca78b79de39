"""Callbacks and readers the training tests share: they watch a real `ember.training.run.train` call from outside."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import TrainerCallback


class GradCapture(TrainerCallback):
    """Keeps a copy of every gradient just before each optimizer step (after accumulation and clipping)."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


class StopAfter(TrainerCallback):
    """Crashes the run (like a killed job) once `step` optimizer steps are done and saved."""

    class Interrupted(RuntimeError):
        pass

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise self.Interrupted(f"stopped before step {self.step + 1}")


def logged_losses(output_dir: Path) -> list[float]:
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def saved_tensors(output_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = Path(output_dir)
    name = "adapter_model.safetensors" if (out / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(out / name)
