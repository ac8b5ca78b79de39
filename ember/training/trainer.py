"""`transformers.Trainer` with Ember's loss (token-mean over the whole accumulation step, optional weights)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Optional

import torch
from transformers import Trainer

from ember.models.forward import accepts_logits_to_keep
from ember.training.losses import trained_positions


class EmberTrainer(Trainer):
    """Uses the public `compute_loss_func` hook; `loss_weights` travel beside the batch, not into the model."""

    def __init__(self, *args, loss_fn: Callable[..., torch.Tensor], **kwargs):
        self._loss_fn = loss_fn
        self._weights: Optional[torch.Tensor] = None
        self._positions: Optional[torch.Tensor] = None
        self._keeps_logits: Optional[bool] = None
        self._tokens_seen = 0
        self._clock: Optional[tuple[float, int]] = None
        super().__init__(*args, compute_loss_func=self._compute_loss, **kwargs)

    def _compute_loss(self, outputs: Any, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        return self._loss_fn(logits, labels, self._weights, num_items_in_batch, positions=self._positions)

    def _accepts_logits_to_keep(self, model) -> bool:
        if self._keeps_logits is None:  # asked once: the model does not change during a run
            self._keeps_logits = accepts_logits_to_keep(self.accelerator.unwrap_model(model))
        return self._keeps_logits

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._weights = inputs.pop("loss_weights", None)
        self._positions = None
        if "labels" in inputs and self._accepts_logits_to_keep(model):
            self._positions = trained_positions(inputs["labels"])
            inputs["logits_to_keep"] = self._positions
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
