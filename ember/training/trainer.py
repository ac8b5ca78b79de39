"""`transformers.Trainer` with Ember's loss (token-mean over the whole accumulation step, optional weights)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Optional

import torch
from transformers import Trainer


class EmberTrainer(Trainer):
    """Uses the public `compute_loss_func` hook; `loss_weights` travel beside the batch, not into the model."""

    def __init__(self, *args, loss_fn: Callable[..., torch.Tensor], **kwargs):
        self._loss_fn = loss_fn
        self._weights: Optional[torch.Tensor] = None
        self._tokens_seen = 0
        self._clock: Optional[tuple[float, int]] = None
        super().__init__(*args, compute_loss_func=self._compute_loss, **kwargs)

    def _compute_loss(self, outputs: Any, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        return self._loss_fn(logits, labels, self._weights, num_items_in_batch)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._weights = inputs.pop("loss_weights", None)
        if model.training:
            mask = inputs.get("attention_mask")
            self._tokens_seen += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        # Non-padding tokens per second on this process, since the previous log line.
        now = time.perf_counter()
        if "loss" in logs and self._clock is not None:
            seconds = now - self._clock[0]
            if seconds > 0:
                logs["tokens_per_second"] = round((self._tokens_seen - self._clock[1]) / seconds, 1)
        if "loss" in logs or self._clock is None:
            self._clock = (now, self._tokens_seen)
        super().log(logs, start_time)
