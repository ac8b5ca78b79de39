"""`transformers.Trainer` with Ember's loss (token-mean over the whole accumulation step, optional weights) and
atomic checkpoints (ember.training.checkpoints)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import torch
from transformers import Trainer
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from ember.core.artifacts import write_metadata
from ember.errors import TrainingStopped
from ember.models.forward import accepts_logits_to_keep, projection_decoder
from ember.training import checkpoints
from ember.training.guard import DivergenceGuard
from ember.training.chunked_loss import CHECK_ELEMENTS, CHUNK_ELEMENTS, linear_cross_entropy, trained_rows
from ember.training.losses import causal_lm_loss, trained_positions


class EmberTrainer(Trainer):
    """Uses the public `compute_loss_func` hook; `loss_weights` travel beside the batch, not into the model.

    `metadata` (`write_metadata` arguments) goes into every checkpoint before it is sealed, so any checkpoint is
    servable and its manifest covers those files too. `guard` judges every optimizer step (ember.training.guard);
    once it has stopped the run, nothing more is saved.
    """

    def __init__(self, *args, loss_fn: Callable[..., torch.Tensor], metadata: Optional[dict] = None,
                 guard: Optional[DivergenceGuard] = None, **kwargs):
        self._loss_fn = loss_fn
        self._metadata = metadata or {}
        self._guard = guard
        if guard is not None:
            kwargs["callbacks"] = [guard, *(kwargs.get("callbacks") or [])]  # judges before other callbacks see the step
        self._staging: Optional[Path] = None
        self._weights: Optional[torch.Tensor] = None
        self._positions: Optional[torch.Tensor] = None
        self._keeps_logits: Optional[bool] = None
        # The chunked loss (ember.training.chunked_loss) replaces the model's logits once a probe of the first
        # training batch has shown that they are the output embedding applied to the last hidden state: None = not
        # yet known.
        self._chunked: Optional[bool] = None
        self._projection: Optional[torch.nn.Linear] = None
        # The decoder's last hidden state, caught by a forward hook while `_catching` (the chunked loss reads it;
        # asking the model for output_hidden_states would hold every layer's output until the loss is done).
        self._decoder_hook: Optional[torch.utils.hooks.RemovableHandle] = None
        self._catching = False
        self._last_hidden: Optional[torch.Tensor] = None
        self._frozen_cast: Optional[tuple[tuple, torch.Tensor]] = None  # (what it was cast from, the cast weight)
        self._step_mode = "logits"
        self._tokens_seen = 0
        self._clock: Optional[tuple[float, int]] = None
        super().__init__(*args, compute_loss_func=self._compute_loss, **kwargs)

    def _compute_loss(self, outputs: Any, labels: torch.Tensor, num_items_in_batch=None) -> torch.Tensor:
        if self._step_mode == "chunked":
            hidden, self._last_hidden = self._last_hidden, None
            rows, targets, scale = trained_rows(hidden, labels, self._weights, num_items_in_batch)
            del hidden  # the gathered rows are all the loss needs
            return linear_cross_entropy(rows, self._projection_weight(), targets, scale, self._projection_dtype())
        logits = outputs["logits"] if isinstance(outputs, dict) else outputs[0]
        return self._loss_fn(logits, labels, self._weights, num_items_in_batch, positions=self._positions)

    def _accepts_logits_to_keep(self, model) -> bool:
        if self._keeps_logits is None:  # asked once: the model does not change during a run
            self._keeps_logits = accepts_logits_to_keep(self.accelerator.unwrap_model(model))
        return self._keeps_logits

    def _chunk_candidate(self, model) -> bool:
        """Whether the chunked loss could stand in for the logits: the causal-LM loss, an output embedding that is a
        plain bias-free Linear held whole on this process (not a ZeRO-3 / FSDP shard, not an adapter layer)."""
        if self._chunked is False or self._loss_fn is not causal_lm_loss or not self._accepts_logits_to_keep(model):
            return False
        if self._projection is None:  # looked up once: the model does not change during a run
            unwrapped = self.accelerator.unwrap_model(model)
            projection = unwrapped.get_output_embeddings()
            weight = getattr(projection, "weight", None)
            whole = weight is not None and type(weight.data) is torch.Tensor and weight.numel() > 0 \
                and not hasattr(weight, "ds_id")
            decoder = projection_decoder(unwrapped)
            if decoder is None or not whole:
                self._chunked = False
                return False
            self._projection = projection
            self._decoder_hook = decoder.register_forward_hook(self._catch_last_hidden)
        return True

    def _catch_last_hidden(self, module, args, output) -> None:
        if self._catching:
            self._last_hidden = output[0]  # last_hidden_state: what the model's head would have projected

    def _projection_weight(self) -> torch.Tensor:
        """The output embedding as the chunked loss reads it. A frozen one (LoRA: tied to the input embedding,
        which stays fp32 under autocast) is cast to the projection's dtype once, not at every step: the same
        numbers as the cast the loss would make, without a vocabulary-sized copy per step."""
        weight, dtype = self._projection.weight, self._projection_dtype()
        if weight.requires_grad or weight.dtype == dtype:
            return weight
        source = (weight.data_ptr(), tuple(weight.shape), weight.dtype, dtype)  # a frozen weight never changes
        if self._frozen_cast is None or self._frozen_cast[0] != source:
            self._frozen_cast = (source, weight.detach().to(dtype))
        return self._frozen_cast[1]

    def _projection_dtype(self) -> torch.dtype:
        """The dtype the model's vocabulary projection computes in: autocast's under mixed precision (accelerate
        hands the logits back in fp32 whatever they were computed in), else the weight's."""
        mixed = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(str(self.accelerator.mixed_precision))
        return mixed or self._projection.weight.dtype

    @torch.no_grad()
    def _probe(self, model, inputs: dict[str, Any]) -> bool:
        """Whether this model's logits are its output embedding applied to its last hidden state, asked of the first
        training batch before it trains: a forward pass without gradients (and in eval mode, so that dropout draws
        no random numbers) that computes the logits at the first few trained positions only. Checking in the
        training forward itself would need the logits at every trained position, [tokens × vocabulary] in fp32 on
        top of the step's activations, in case the check fails and the plain loss needs them."""
        module = self.accelerator.unwrap_model(model)  # no DDP / DeepSpeed hooks: nothing will run backward
        rows = inputs["input_ids"].size(0)
        count = max(1, CHECK_ELEMENTS // (rows * self._projection.weight.size(0)))
        probe = {k: v for k, v in inputs.items() if k != "labels"}
        probe["logits_to_keep"] = self._positions[:count]
        training = module.training
        module.eval()
        self._catching = True
        try:
            logits = module(**probe)["logits"]
            hidden, self._last_hidden = self._last_hidden, None
        finally:
            self._catching = False
            module.train(training)
        return hidden is not None and self._logits_are_projected(hidden, logits, self._positions[:count])

    @torch.no_grad()
    def _logits_are_projected(self, hidden: torch.Tensor, logits: torch.Tensor, positions: torch.Tensor) -> bool:
        """The probe's check: the model's logits at `positions` equal the output embedding applied to its last
        hidden state there, in the logits' dtype (a final soft-cap or logit scale, as some families have, fails it)."""
        dtype = self._projection_dtype()
        weight = self._projection_weight().to(dtype)
        rows = hidden[:, positions].reshape(-1, hidden.size(-1))
        logits = logits.reshape(rows.size(0), -1)
        # a chunk of rows at a time: compared whole, the check's temporaries took several times the logits' memory
        step = max(1, CHUNK_ELEMENTS // max(1, logits.size(-1)))
        return all(torch.allclose((rows[i:i + step].to(dtype) @ weight.T).float(), logits[i:i + step].float(),
                                  rtol=1e-2, atol=1e-2) for i in range(0, rows.size(0), step))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._weights = inputs.pop("loss_weights", None)
        self._positions = None
        self._step_mode = "logits"
        if "labels" in inputs and self._accepts_logits_to_keep(model):
            self._positions = trained_positions(inputs["labels"])
            inputs["logits_to_keep"] = self._positions
            if model.training and not return_outputs and self._chunk_candidate(model):
                if self._chunked is None:  # decided once, so every step's loss, resumed or not, takes one path
                    self._chunked = self._probe(model, inputs)
                if self._chunked:
                    self._step_mode = "chunked"
                    inputs["logits_to_keep"] = self._positions[:0]  # no logits: the loss projects the hidden states
        if model.training:
            mask = inputs.get("attention_mask")
            self._tokens_seen += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        self._catching = self._step_mode == "chunked"
        try:
            return super().compute_loss(model, inputs, return_outputs=return_outputs,
                                        num_items_in_batch=num_items_in_batch)
        finally:
            self._catching, self._last_hidden = False, None

    def train(self, *args, **kwargs):
        try:
            return super().train(*args, **kwargs)
        finally:  # the model outlives the run (evaluation, export): it keeps no hook that points back here
            if self._decoder_hook is not None:
                self._decoder_hook.remove()
                self._decoder_hook, self._projection = None, None

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._guard is not None:
            self._guard.add_loss(loss)
        return loss

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        # Non-padding tokens per second on this process, since the previous log line.
        now = time.perf_counter()
        if "loss" in logs and self._clock is not None:
            seconds = now - self._clock[0]
            if seconds > 0:
                logs["tokens_per_second"] = round((self._tokens_seen - self._clock[1]) / seconds, 1)
        if "loss" in logs or self._clock is None:
            self._clock = (now, self._tokens_seen)
        if "loss" in logs and self._guard is not None:
            judged, dropped, nonfinite = self._guard.window()
            if dropped:
                logs["dropped_steps"] = dropped
                # transformers stands in for a non-finite loss with the window's mean so far (0 when the window is
                # this one step): show no loss where no step has a finite one. A step dropped for a spike or a
                # collapse keeps its loss, which transformers logged as it was.
                if nonfinite == judged:
                    logs["loss"] = float("nan")
        super().log(logs, start_time)

    # ---- atomic checkpoints ----
    # transformers 5.x `_save_checkpoint` writes `<_get_output_dir()>/checkpoint-N` (weights, optimizer, scheduler,
    # RNG, trainer state) and then rotates that folder's checkpoints. Pointing `_get_output_dir` at the staging
    # folder for the duration of one save makes it write there and leaves its rotation nothing to delete; the
    # checkpoint is then sealed, renamed into place and rotated here. tests/training/test_atomic_checkpoints.py
    # kills a run at each step of this sequence.

    def _get_output_dir(self, trial) -> str:
        return str(self._staging) if self._staging is not None else super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        if self._guard is not None and self._guard.stopped:
            return  # the weights are suspect: the last checkpoint written before stays the newest
        out = Path(super()._get_output_dir(trial))
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        staged = checkpoints.staging_root(out) / name
        if self.args.should_save:
            shutil.rmtree(staged, ignore_errors=True)  # a leftover of an interrupted save of this step
        self.accelerator.wait_for_everyone()
        self._staging = staged.parent
        try:
            super()._save_checkpoint(model, trial)
            self.accelerator.wait_for_everyone()  # every rank's files (RNG states, shards) are in the folder
            if self.args.should_save:
                self._seal(staged, out / name)
        except Exception as exc:  # a full disk surfaces as OSError, torch's RuntimeError or safetensors' own error
            shutil.rmtree(staged, ignore_errors=True)
            newest = checkpoints.scan(out).newest
            kept = f"the newest complete checkpoint, {newest}, is kept" if newest else "no complete checkpoint exists yet"
            raise TrainingStopped(
                f"could not write {name} into {out}: {exc}; {kept}. Free space (or fix the permissions) and continue "
                "with train.resume_from_checkpoint=auto"
            ) from exc
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()

    def _seal(self, staged: Path, final: Path) -> None:
        best = self.state.best_model_checkpoint
        if best is not None and Path(best).parent == staged.parent:
            # The Trainer recorded where it wrote; the checkpoint will live under its final name.
            self.state.best_model_checkpoint = str(final.parent / Path(best).name)
            self.state.save_to_json(str(staged / checkpoints.TRAINER_STATE))
        if self._metadata:
            write_metadata(staged, **self._metadata)
        checkpoints.write_manifest(staged, self.state.global_step)
        checkpoints.publish(staged, final)
        checkpoints.rotate(final.parent, self.args.save_total_limit, keep=self.state.best_model_checkpoint)
