"""The preference trainer: one forward of a batch's chosen and rejected (or KTO's matched and mismatched) sequences,
the reference's log-probs, the stage's loss, and TRL's metric names in the logs.

**Reference.** LoRA / QLoRA: the same model with its adapters disabled (peft's `disable_adapter()`), so no second
copy is held. Full fine-tuning and freeze: a frozen copy made before the first step, or, with
`preference.precompute_ref: true`, log-probs computed once before training and stored next to the processed data
(keyed by a digest of the reference's weights), so no copy is held at all.

**Normalisation.** The loss of an optimizer step is the sum of the per-example losses over every micro-batch and
every rank, divided by the number of examples (ORPO's NLL: by the chosen-answer tokens), exactly like the SFT loss
divides by trained tokens: batch 8 × accumulation 1 equals batch 2 × accumulation 4, and two ranks equal one.
KTO's KL baseline is the one exception: it is estimated from each micro-batch (gathered over ranks), as in TRL.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import logging
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import pyarrow as pa
import torch

from ember.config.schema import PreferenceConfig
from ember.data.render import IGNORE_INDEX
from ember.data.store import ArrowWriter, read_table
from ember.training.losses import trained_positions
from ember.training.preference_losses import KTOLogps, Objective, PairLogps, Terms
from ember.training.trainer import EmberTrainer

log = logging.getLogger(__name__)
REF_SCHEMA = pa.schema([("ref_logps", pa.list_(pa.float64()))])


def sequence_logps(logits: torch.Tensor, labels: torch.Tensor, positions: Optional[torch.Tensor] = None,
                   sequence_index: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(summed log-probs of the trained tokens, their count) per sequence, in float32.

    `logits` cover every position, or only `positions` (see `trained_positions`); a packed batch (one row) names
    each token's sequence in `sequence_index`.
    """
    if positions is None:
        logits, targets = logits[..., :-1, :], labels[..., 1:]
    else:
        targets = labels[..., positions + 1]
    targets = targets.to(logits.device)
    mask = targets.ne(IGNORE_INDEX)
    safe = targets.masked_fill(~mask, 0)
    logits = logits.float()
    token = logits.gather(-1, safe.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    token = token.masked_fill(~mask, 0.0)
    if sequence_index is None:
        return token.sum(-1), mask.sum(-1).to(token.dtype)
    index = sequence_index[..., 1:] if positions is None else sequence_index[..., positions + 1]
    index = index.reshape(-1).to(logits.device)
    count = int(sequence_index.max()) + 1
    sums = torch.zeros(count, dtype=token.dtype, device=token.device).index_add(0, index, token.reshape(-1))
    tokens = torch.zeros(count, dtype=token.dtype, device=token.device).index_add(0, index, mask.reshape(-1).to(token.dtype))
    return sums, tokens


def _is_peft(model) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


class PreferenceTrainer(EmberTrainer):
    """`EmberTrainer` for the preference stages; `objective` is one of `preference_losses.OBJECTIVES`."""

    def __init__(self, *args, objective: Objective, options: PreferenceConfig, ref_model=None, **kwargs):
        super().__init__(*args, loss_fn=objective.loss, **kwargs)
        self.objective, self.options = objective, options
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.requires_grad_(False)
            self.ref_model = ref_model.to(self.args.device).eval()
        self._metrics: dict[str, dict[str, list[float]]] = {"train": defaultdict(list), "eval": defaultdict(list)}
        self._ref_ready = not (options.precompute_ref and objective.needs_reference)

    # -- counting ---------------------------------------------------------------------------------------------------
    @staticmethod
    def _examples(batch: dict[str, torch.Tensor]) -> int:
        if "kto_label" in batch:
            return len(batch["kto_label"])
        sequences = int(batch["sequence_index"].max()) + 1 if "sequence_index" in batch else batch["labels"].shape[0]
        return sequences // 2

    @staticmethod
    def _chosen_tokens(batch: dict[str, torch.Tensor]) -> int:
        labels = batch["labels"]
        trained = labels[..., 1:].ne(IGNORE_INDEX)
        if "sequence_index" in batch:
            first = batch["sequence_index"][..., 1:] < PreferenceTrainer._examples(batch)
            return int((trained & first).sum())
        return int(trained[: labels.shape[0] // 2].sum())

    def _get_num_items_in_batch(self, batch_samples: list, device: torch.device) -> Optional[torch.Tensor]:
        """[examples, chosen-answer tokens] of the whole accumulation step, summed over the ranks."""
        if not batch_samples:
            return None
        counts = torch.tensor([[self._examples(b), self._chosen_tokens(b)] for b in batch_samples],
                              dtype=torch.float64).sum(0).to(device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.gather(counts).reshape(-1, 2).sum(0)
        return counts

    # -- the loss ---------------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if model.training else "eval"
        ref_logps = inputs.pop("ref_logps", None)
        label = inputs.pop("kto_label", None)
        index = inputs.pop("sequence_index", None)
        labels = inputs.pop("labels")
        if self._accepts_logits_to_keep(model):
            inputs["logits_to_keep"] = positions = trained_positions(labels)
        else:
            positions = None
        if model.training:
            mask = inputs.get("attention_mask")
            self._tokens_seen += int(mask.sum()) if mask is not None else int(inputs["input_ids"].numel())
        inputs["use_cache"] = False  # packed batches must not build a KV cache (see ember.data.collate)
        logps, tokens = sequence_logps(model(**inputs).logits, labels, positions, index)
        ref = None
        if self.objective.needs_reference:
            if ref_logps is not None:
                ref = ref_logps.to(logps.device, logps.dtype)
            else:
                with torch.no_grad():
                    ref = sequence_logps(self._reference_forward(model, inputs).logits, labels, positions, index)[0]
        terms = self._terms(logps, tokens, ref, label)
        n = len(logps) // 2
        chosen_tokens = tokens[:n].sum() if label is None else tokens[:n][label.to(tokens.device)].sum()
        if num_items_in_batch is None:  # a call outside the training loop: this batch alone
            num_items_in_batch = torch.stack([torch.tensor(float(n), dtype=torch.float64), chosen_tokens.double().cpu()])
        examples, step_tokens = num_items_in_batch.to(logps.device)
        loss = terms.per_example.sum() / examples
        if terms.token_sum is not None:
            loss = loss + terms.token_sum / step_tokens.clamp(min=1)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            loss = loss * self.args.world_size  # DDP averages the ranks' gradients; the counts covered all ranks
        self._record(mode, terms, chosen_tokens)
        loss = loss.to(logps.dtype)
        return (loss, {}) if return_outputs else loss

    def _terms(self, logps: torch.Tensor, tokens: torch.Tensor, ref: Optional[torch.Tensor],
               label: Optional[torch.Tensor]) -> Terms:
        n = len(logps) // 2
        if self.objective.kind == "kto":
            assert ref is not None and label is not None
            kl = (logps[n:] - ref[n:]).mean().detach()
            if self.args.world_size > 1:
                kl = self.accelerator.gather(kl.reshape(1)).mean()
            return self.objective.loss(KTOLogps(logps[:n], ref[:n], label.to(logps.device), kl.clamp(min=0)),
                                       self.options)
        pairs = PairLogps(logps[:n], logps[n:], tokens[:n], tokens[n:],
                          ref[:n] if ref is not None else None, ref[n:] if ref is not None else None)
        return self.objective.loss(pairs, self.options)

    def _reference_forward(self, model, inputs: dict[str, Any]):
        if self.ref_model is not None:
            return self.ref_model(**inputs)
        unwrapped = self.accelerator.unwrap_model(model)
        if not _is_peft(unwrapped):
            raise RuntimeError("no reference model: full fine-tuning needs ref_model or preference.precompute_ref")
        with unwrapped.disable_adapter():
            return unwrapped(**inputs)

    # -- metrics (TRL's names) --------------------------------------------------------------------------------------
    def _record(self, mode: str, terms: Terms, chosen_tokens: torch.Tensor) -> None:
        """Append this batch's metrics: each a total over the ranks divided by its count over the ranks (ranks may
        hold different numbers of KTO desirable / undesirable examples, so sums and counts travel, never lists)."""
        chosen, rejected = terms.chosen_rewards.detach().float(), terms.rejected_rewards.detach().float()
        parts = {"rewards/chosen": (chosen.sum(), len(chosen)), "rewards/rejected": (rejected.sum(), len(rejected)),
                 "logps/chosen": (terms.chosen_logps.float().sum(), len(chosen)),
                 "logps/rejected": (terms.rejected_logps.float().sum(), len(rejected))}
        if self.objective.kind == "pairs":
            parts["rewards/accuracies"] = ((chosen > rejected).float().sum(), len(chosen))
            parts["rewards/margins"] = ((chosen - rejected).sum(), len(chosen))
        if terms.token_sum is not None:
            parts["nll_loss"] = (terms.token_sum.detach().float(), chosen_tokens.float())
        for key, value in terms.extra.items():
            parts[key] = (value.detach().float().sum(), value.numel())
        device = chosen.device
        table = torch.stack([torch.stack([torch.as_tensor(total, dtype=torch.float32, device=device).reshape(()),
                                          torch.as_tensor(count, dtype=torch.float32, device=device).reshape(())])
                             for total, count in parts.values()])
        if self.args.world_size > 1:
            table = self.accelerator.gather(table.unsqueeze(0)).sum(0)
        metrics = self._metrics[mode]
        values = {key: float(total / count) for key, (total, count) in zip(parts, table.tolist(), strict=True) if count}
        for key, value in values.items():
            metrics[key].append(value)
        if self.objective.kind == "kto" and "rewards/chosen" in values and "rewards/rejected" in values:
            metrics["rewards/margins"].append(values["rewards/chosen"] - values["rewards/rejected"])

    def log(self, logs: dict[str, float], start_time: Optional[float] = None) -> None:
        mode = "train" if self.model.training else "eval"
        averaged = {key: sum(v) / len(v) for key, v in self._metrics[mode].items() if v}
        if mode == "eval":
            averaged = {f"eval_{key}": value for key, value in averaged.items()}
        logs.update(averaged)
        self._metrics[mode].clear()
        super().log(logs, start_time)

    # -- precomputed reference log-probs ----------------------------------------------------------------------------
    def train(self, *args, **kwargs):
        self.precompute_reference()
        return super().train(*args, **kwargs)

    def evaluate(self, *args, **kwargs):
        self.precompute_reference()
        return super().evaluate(*args, **kwargs)

    def precompute_reference(self) -> None:
        """With `precompute_ref`, give the train and eval datasets their reference log-probs (computed now from the
        reference, or read from beside the data when this reference already computed them)."""
        if self._ref_ready:
            return
        digest = self._reference_digest()
        for dataset in (self.train_dataset, self.eval_dataset):
            if dataset is not None and getattr(dataset, "ref_logps", None) is None:
                dataset.ref_logps = self._reference_logps_of(dataset, digest)
        self._ref_ready = True

    def _reference_model(self):
        if self.ref_model is not None:
            return self.ref_model, contextlib.nullcontext()
        model = self.accelerator.unwrap_model(self.model)
        return model, (model.disable_adapter() if _is_peft(model) else contextlib.nullcontext())

    def _reference_digest(self) -> str:
        """The reference's identity: its weights (for LoRA, the base's), the precision it runs in."""
        model, _ = self._reference_model()
        peft = _is_peft(model) and self.ref_model is None
        h = hashlib.sha256(f"{self.args.bf16}/{self.args.fp16}/{self.objective.kind}".encode())
        for name, p in model.named_parameters():
            if peft and ("lora_" in name or "modules_to_save" in name):
                continue
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()[:16]

    def _reference_logps_of(self, dataset, digest: str) -> list[list[float]]:
        samples = dataset.samples
        path = Path(samples.paths[0]).with_name(f"{Path(samples.paths[0]).stem}.ref-{digest}.arrow")
        with self.args.main_process_first(desc="reference log-probs", local=False):
            if not path.is_file():
                rows = self._compute_reference(dataset)
                partial = path.with_name(f".{path.name}.{os.getpid()}")
                with ArrowWriter(partial, REF_SCHEMA) as writer:
                    for row in rows:
                        writer.write({"ref_logps": row})
                os.replace(partial, path)
                log.info("reference log-probs of %d samples stored in %s", len(rows), path)
        return read_table([path], REF_SCHEMA).column("ref_logps").to_pylist()

    def _compute_reference(self, dataset) -> list[list[float]]:
        model, disabled = self._reference_model()
        was_training = model.training
        model.eval()
        batch_size = self.args.per_device_eval_batch_size
        rows: list[list[float]] = []
        try:
            with torch.no_grad(), disabled, self.compute_loss_context_manager():
                for begin in range(0, len(dataset), batch_size):
                    items = [dataset[i] for i in range(begin, min(begin + batch_size, len(dataset)))]
                    batch = {k: v.to(self.args.device) if isinstance(v, torch.Tensor) else v  # flash's max_length
                             for k, v in self.data_collator(items).items()}
                    batch.pop("kto_label", None)
                    index = batch.pop("sequence_index", None)
                    labels = batch.pop("labels")
                    positions = trained_positions(labels) if self._accepts_logits_to_keep(model) else None
                    if positions is not None:
                        batch["logits_to_keep"] = positions
                    logits = model(**batch, use_cache=False).logits
                    logps = sequence_logps(logits, labels, positions, index)[0].double().cpu()
                    per_row = len(logps) // len(items)
                    rows += [[float(logps[k * len(items) + i]) for k in range(per_row)] for i in range(len(items))]
        finally:
            model.train(was_training)
        return rows


def reference_copy(model):
    """A frozen copy of the model as it is before the first step: the reference of full fine-tuning."""
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def disable_dropout(model) -> int:
    """Set every dropout probability to 0 (TRL's `disable_dropout`); returns how many modules it changed."""
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout) and module.p:
            module.p = 0.0
            count += 1
    return count
