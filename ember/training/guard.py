"""The divergence guard: every optimizer step is judged before it is applied.

Judged on the step's loss (the sum of its micro-batch losses, as logged) and its gradient norm, averaged over ranks
so that every rank decides alike:
- a non-finite loss or gradient norm: `train.on_nonfinite` says stop, or skip this optimizer step (its gradients are
  dropped, so neither the weights nor the optimizer state change);
- a divergence: the loss jumps above `train.loss_spike_factor` times its running level (the median of the last
  `WINDOW` steps) and by more than `MARGIN` nats, or the gradient is exactly zero while the loss is not (the model's
  output no longer depends on its weights: it has collapsed). The run stops.

A stopped run saves nothing more (no checkpoint, so rotation cannot remove a good one, and no final weights); the
caller turns `stopped` into an error message and a non-zero exit.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from typing import Optional

import torch
from transformers import TrainerCallback

WINDOW = 16
MARGIN = 1.0  # nats: a jump must also be this large, so a loss that is already tiny may wobble


class DivergenceGuard(TrainerCallback):
    def __init__(self, on_nonfinite: str = "stop", spike_factor: Optional[float] = 3.0, check_grads: bool = True):
        self.on_nonfinite = on_nonfinite
        self.spike_factor = spike_factor
        self.check_grads = check_grads  # False under fp16 loss scaling: its overflow steps are routine, and skipped
        self.recent: deque[float] = deque(maxlen=WINDOW)
        self.stopped: Optional[str] = None  # why the run stopped, e.g. "step 7: the loss is nan"
        self.stopped_nonfinite = False
        self.skipped: list[int] = []  # steps whose update was dropped (on_nonfinite=skip_step)
        self._loss: Optional[torch.Tensor] = None
        self._judged = self._dropped = self._nonfinite = 0  # since the last `window()` call

    def add_loss(self, loss: torch.Tensor) -> None:
        """Called by the trainer with each micro-batch's (detached) loss."""
        loss = loss.detach().float().reshape(())
        self._loss = loss if self._loss is None else self._loss + loss

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        loss, norm = self._measure(model)
        step = state.global_step + 1
        problem, nonfinite = self.judge(loss, norm)
        self._judged += 1
        if problem is None:
            self.recent.append(loss)
            return
        self._dropped += 1
        self._nonfinite += nonfinite
        for p in model.parameters():  # the optimizer skips parameters without a gradient: no update at all
            p.grad = None
        if nonfinite and self.on_nonfinite == "skip_step":
            self.skipped.append(step)
            if state.is_world_process_zero:
                print(f"step {step}: {problem}; skipped this optimizer step (train.on_nonfinite=skip_step, "
                      f"{len(self.skipped)} skipped so far)", flush=True)
            return
        self.stopped = f"step {step}: {problem}"
        self.stopped_nonfinite = nonfinite
        control.should_training_stop = True

    def on_step_end(self, args, state, control, **kwargs):
        self._hold(control)

    def on_epoch_end(self, args, state, control, **kwargs):
        self._hold(control)

    def _hold(self, control) -> None:
        if self.stopped:
            control.should_save = False
            control.should_evaluate = False

    def window(self) -> tuple[int, int, int]:
        """(steps judged, steps whose update was dropped, those of them with a non-finite loss or gradient) since the
        previous call: the trainer asks at each log."""
        counts = (self._judged, self._dropped, self._nonfinite)
        self._judged = self._dropped = self._nonfinite = 0
        return counts

    def judge(self, loss: float, norm: Optional[float]) -> tuple[Optional[str], bool]:
        """(what is wrong, whether it is a non-finite number) for one step, or (None, False) when it is fine."""
        if not math.isfinite(loss):
            return f"the loss is {loss}", True
        if norm is not None and not math.isfinite(norm):
            return f"the gradient norm is {norm} (loss {loss:.4g})", True
        if not self.spike_factor:
            return None, False
        if norm == 0.0 and loss > 0.0:
            return (f"the gradient is exactly 0 while the loss is {loss:.4g}: the model's output no longer depends "
                    "on its weights (it has collapsed)"), False
        if self.recent:
            level = statistics.median(self.recent)
            if loss > self.spike_factor * level and loss > level + MARGIN:
                return (f"the loss jumped to {loss:.4g}, {loss / max(level, 1e-12):.1f}x its running level {level:.4g} "
                        f"(median of the last {len(self.recent)} steps; train.loss_spike_factor="
                        f"{self.spike_factor:g})"), False
        return None, False

    def _measure(self, model) -> tuple[float, Optional[float]]:
        """This step's loss and gradient norm, summed (norm: squared) over ranks so every rank judges alike."""
        loss = self._loss if self._loss is not None else torch.tensor(float("nan"))
        self._loss = None
        grads = [p.grad for p in model.parameters() if p.grad is not None] if self.check_grads else []
        if grads:
            total = torch.nn.utils.get_total_norm(grads)
            # FSDP2 shards gradients as DTensors: the norm is one too, and its global value needs a collective.
            total = total.full_tensor() if hasattr(total, "full_tensor") else total
            squared = total.float().to(loss.device) ** 2
        else:
            squared = loss.new_zeros(())
        values = torch.stack([loss.to(squared.device), squared, loss.new_tensor(float(bool(grads))).to(squared.device)])
        world = 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            if world > 1:
                torch.distributed.all_reduce(values)
        loss_mean, squared_sum, with_grads = (float(v) for v in values.tolist())
        return loss_mean / world, math.sqrt(squared_sum) if with_grads else None
