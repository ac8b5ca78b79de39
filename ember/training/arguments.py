"""`train:` section → `transformers.TrainingArguments` (same names; `extra` passes through, checked in validate)."""

from __future__ import annotations

import dataclasses
import logging
import os

import torch

from ember.config.schema import EmberConfig
from ember.errors import ConfigError
from ember.core.hardware import bf16_supported

log = logging.getLogger(__name__)

_NOT_PASSED = {"extra", "resume_from_checkpoint", "bf16", "use_cpu", "gradient_checkpointing", "report_to", "warmup_ratio",
               "warmup_steps", "group_by_length", "on_nonfinite", "loss_spike_factor"}


def training_arguments(cfg: EmberConfig):
    from transformers import TrainingArguments

    t = cfg.train  # validated: train.extra holds TrainingArguments fields of their types (ember.config.validate)
    kwargs = {f.name: getattr(t, f.name) for f in dataclasses.fields(t) if f.name not in _NOT_PASSED}
    use_cpu = t.use_cpu if t.use_cpu is not None else not torch.cuda.is_available()
    bf16 = t.bf16 if t.bf16 is not None else (bf16_supported() and not t.fp16 and cfg.method.type != "qlora")
    report_to = t.report_to if t.report_to not in (None, "none", []) else "none"
    if t.eval_steps is None:
        kwargs.pop("eval_steps")
    # transformers 5 folds warmup_ratio into warmup_steps (a float < 1 is a ratio) and group_by_length into
    # train_sampling_strategy; users keep the familiar names.
    if t.warmup_ratio and t.warmup_steps:
        raise ConfigError("train.warmup_ratio and train.warmup_steps are both set: choose one")
    kwargs.update(
        warmup_steps=t.warmup_ratio if t.warmup_ratio else t.warmup_steps,
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        output_dir=cfg.output.dir,
        use_cpu=use_cpu,
        bf16=bf16,
        report_to=report_to,
        remove_unused_columns=False,  # our collator builds exactly the model inputs (+ loss_weights)
        include_num_input_tokens_seen="non_padding",
        ddp_find_unused_parameters=False if cfg.method.type in ("lora", "qlora") else None,
        prediction_loss_only=True,  # evaluation reports loss; gathering 49k-wide logits would only cost memory
        disable_tqdm=os.environ.get("EMBER_NO_PROGRESS") == "1",
    )
    if t.gradient_checkpointing:
        kwargs.update(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False})
    kwargs.update(t.extra)
    if "paged" in str(kwargs.get("optim", "")) and use_cpu:
        # bitsandbytes says so with a UserWarning that library-warning filters hide: say it here.
        log.warning("train.optim=%s: paged optimizers page state to GPU memory; on a CPU bitsandbytes runs the "
                    "same optimizer without paging", kwargs["optim"])
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"train: {exc}") from None
