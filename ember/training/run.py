"""`ember train`: config → data → model + method → Trainer → a servable output directory."""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from ember.config import dump_yaml, validate
from ember.config.validate import config_warnings
from ember.config.schema import EmberConfig
from ember.errors import ConfigError, TrainingStopped
from ember.core.artifacts import DATA_REPORT, write_metadata
from ember.models.forward import base_model
from ember.training.output_dir import clear_previous_run, finished_weights
from ember.training.distributed import (fsdp_without_gpus, is_main_process, main_process_first, rank,
                                        start_deepspeed_comm)

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    output_dir: Path
    metrics: dict[str, Any]
    trainable_params: int
    total_params: int


def say(message: str) -> None:
    if is_main_process():
        print(message, flush=True)


def resolve_resume(cfg: EmberConfig) -> Optional[str]:
    """The checkpoint to continue from: `auto` takes the newest complete one and names the incomplete ones it passed
    over; an explicit path must be complete. A run that starts from step 0 into an earlier run's checkpoints or
    finished weights needs output.overwrite (see ember.training.output_dir)."""
    from ember.training import checkpoints

    value = cfg.train.resume_from_checkpoint
    out = Path(cfg.output.dir)
    if value == "auto":
        found = checkpoints.scan(out)
        if found.partial:
            say(f"resume: ignoring {len(found.partial)} incomplete checkpoint(s): {found.describe_partial()}")
        if found.newest is not None:
            say(f"resume: continuing from {found.newest}")
            return str(found.newest)
        say(f"resume: no complete checkpoint in {out}; starting from step 0")
    elif value:
        path = Path(value)
        if not path.is_dir():
            raise ConfigError(f"train.resume_from_checkpoint: {value} is not a checkpoint directory")
        why = checkpoints.problem(path)
        if why is not None:
            raise ConfigError(
                f"train.resume_from_checkpoint: {value} is not a complete checkpoint ({why}); "
                "train.resume_from_checkpoint=auto takes the newest complete one"
            )
        return value
    elif out.is_dir() and any(out.glob("checkpoint-*")) and not cfg.output.overwrite:
        raise ConfigError(
            f"{out} already holds checkpoints: continue with train.resume_from_checkpoint=auto, "
            "or start over with output.overwrite=true (or another output.dir)"
        )
    finished = finished_weights(out)
    if finished and not cfg.output.overwrite:
        raise ConfigError(f"{out} holds a finished run ({', '.join(finished)}): train into another output.dir, or "
                          "replace that run with output.overwrite=true")
    return None


def train(cfg: EmberConfig, callbacks: Sequence[Any] = ()) -> TrainResult:
    """Run one training job; `callbacks` (`transformers.TrainerCallback`s) join Ember's own, e.g. to watch steps."""
    import torch
    from transformers import set_seed

    from ember.data.report import skip_summary
    from ember.training.prepare import new_token_warning, prepare_data
    from ember.models.adapters import (apply_method, describe_parameters, keep_adapter_inputs_in_autocast_dtype,
                                       parameter_counts, quantization_config, store_frozen_linears_in)
    from ember.models.loading import check_reachable, detect_family, load_model
    from ember.core.hardware import resolve_dtype
    from ember.core.paths import check_writable
    from ember.training.arguments import training_arguments
    from ember.training import checkpoints
    from ember.training.callbacks import LossPlotCallback
    from ember.training.guard import DivergenceGuard
    from ember.models.segment_attention import packed_row_attention

    validate(cfg)
    if is_main_process():  # a read-only or full output.dir fails now, not after the data and the model
        check_writable(Path(cfg.output.dir) / "ember_run.yaml")
    check_reachable(cfg.model)  # an offline hub id fails here, not deep inside the tokenizer or weight loading
    for warning in config_warnings(cfg):
        say(f"warning: {warning}")
    resume = resolve_resume(cfg)
    if resume is None and cfg.output.overwrite and is_main_process():
        if removed := clear_previous_run(Path(cfg.output.dir)):
            say(f"output.overwrite: removed the earlier run's {', '.join(removed)} from {cfg.output.dir}")
    if is_main_process():
        # Before the TrainingArguments exist: once they hold a ZeRO-3 config, building even the planner's meta-device
        # model goes through deepspeed.zero.Init, whose collectives would wait for the other ranks.
        say(_plan_line(cfg))
    args = training_arguments(cfg)  # fails on bad train: values before any weight is loaded
    start_deepspeed_comm(args)
    if warning := fsdp_without_gpus(args):
        say(warning)
    out = Path(cfg.output.dir)
    config_yaml = dump_yaml(cfg)
    say("resolved config:\n" + config_yaml)
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        (out / "ember_run.yaml").write_text(config_yaml, encoding="utf-8")
        checkpoints.clear_staging(out)  # leftovers of an interrupted save (already reported by resolve_resume)
    set_seed(cfg.train.seed)
    torch.set_num_threads(max(1, torch.get_num_threads()))

    with main_process_first(args, shared_cache=cfg.data.cache):  # rank 0 processes, the others read its cache
        prepared = prepare_data(cfg, progress=is_main_process(),
                                report_path=out / DATA_REPORT if is_main_process() else None)
    log.info("rank %d: data %s", rank(), "read from the cache" if prepared.from_cache else "processed")
    report = prepared.data.report
    say(f"data: {report.train_samples} train / {report.eval_samples} eval samples, {report.trained_tokens} trained "
        f"tokens{' (from cache)' if prepared.from_cache else ''}")
    if is_main_process():
        (out / DATA_REPORT).write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    for line in skip_summary(report):
        say(line)
    if report.train_samples == 0:  # the report is written; the Trainer would fail on an empty sampler
        raise ConfigError(_no_train_samples(cfg, report.eval_samples))
    for warning in report.warnings[:10]:
        say(f"data warning: {warning}")
    for warning in [new_token_warning(prepared, cfg), *_schedule_warnings(cfg, len(prepared.data.train), args.world_size)]:
        if warning:
            say(f"warning: {warning}")
    tokenizer = prepared.tokenizer

    compute = resolve_dtype(cfg.method.compute_dtype if cfg.method.type == "qlora" else "auto")
    model = load_model(cfg.model, quantization_config=quantization_config(cfg.method, compute), vocab_size=len(tokenizer))
    new_rows = _fit_embeddings(model, tokenizer, prepared.added_tokens)
    family = detect_family(getattr(model.config, "model_type", ""), cfg.model.family)
    model.config.use_cache = False  # training never needs the KV cache (and packed batches must not build one)
    model = apply_method(model, cfg.method, family, cfg.train.gradient_checkpointing, _rows_to_train(new_rows, cfg))
    base = base_model(model)
    attention = packed_row_attention(base)  # how a packed row's samples are kept apart, if without a mask
    packing = _packing(cfg, attention, prepared.stage.packs_by_default())
    sharded = args.deepspeed or args.fsdp or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true" or \
        os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    if cfg.method.type == "lora" and args.bf16 and not sharded:
        # autocast reads them in bf16 anyway; the adapter, not the base, is what a LoRA run saves
        store_frozen_linears_in(model, torch.bfloat16)
        keep_adapter_inputs_in_autocast_dtype(model)
    trainable, total = parameter_counts(model)
    say(describe_parameters(model))

    stage = prepared.stage  # the configured stage, in its image-text form for an image-text model
    metadata = {"config_yaml": config_yaml, "template": _template_record(prepared.renderer, cfg)}
    guard = DivergenceGuard(cfg.train.on_nonfinite, cfg.train.loss_spike_factor, check_grads=not args.fp16)
    trainer = stage.trainer(  # the stage's Trainer (EmberTrainer, or the preference trainer with its reference)
        cfg,
        model=model,
        args=args,
        train_dataset=stage.dataset(prepared.data.train),
        eval_dataset=stage.dataset(prepared.data.eval) if prepared.data.eval else None,
        data_collator=stage.collator(tokenizer, packing, flash=attention == "flash"),
        processing_class=prepared.processor or tokenizer,  # what checkpoints save: the processor holds the tokenizer
        callbacks=[*([LossPlotCallback()] if cfg.output.plot_loss else []), *_upload_callbacks(cfg), *callbacks],
        optimizers=(_optimizer(model, args, cfg), None),
        metadata=metadata,
        guard=guard,
    )
    with _padding_free_attention(base, packing):
        result = trainer.train(resume_from_checkpoint=resume)
    if guard.stopped:
        raise TrainingStopped(_stopped_message(guard, cfg))
    try:
        trainer.save_model(str(out))
        trainer.save_state()
    except Exception as exc:  # a full disk surfaces as OSError, torch's RuntimeError or safetensors' own error
        newest = checkpoints.scan(out).newest
        kept = (f"the newest complete checkpoint, {newest}, is kept (train.resume_from_checkpoint=auto continues "
                "from it)" if newest else "no complete checkpoint exists")
        raise TrainingStopped(f"training finished but the model could not be written into {out}: {exc}; {kept}. "
                              "Free space (or fix the permissions) and run again") from exc
    metrics = dict(result.metrics)
    if guard.skipped:
        metrics["skipped_steps"] = guard.skipped
        say(f"warning: {len(guard.skipped)} optimizer step(s) skipped for non-finite numbers: steps {guard.skipped}")
    if prepared.data.eval:
        with _padding_free_attention(base, packing):
            metrics.update(trainer.evaluate())
    if trainer.is_world_process_zero():
        write_metadata(out, tokenizer=prepared.processor or tokenizer, **metadata)
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    say(f"saved to {out}  (train loss {metrics.get('train_loss', float('nan')):.4f})")
    if cfg.output.push_to_hub and trainer.is_world_process_zero():
        from ember.training.hub import push_run

        push_run(cfg, out)  # after every file is written: a failed upload loses nothing
        say(f"uploaded {out} to {cfg.output.hub}:{cfg.output.push_to_hub}")
    return TrainResult(out, metrics, trainable, total)


def _packing(cfg: EmberConfig, attention: Optional[str], stage_packs: bool) -> bool:
    """`data.packing`, with null decided here: padding-free where the stage allows it (not image batches, not
    preference pairs: `Stage.packs_by_default`) and the model's attention keeps a packed row's samples apart without
    a block-diagonal mask (`attention`, ember.models.segment_attention.packed_row_attention: SDPA sample by sample,
    or a flash-attention kernel); padded rows for other attention code, whose packed rows would need the mask (no
    faster than padding) or might not keep samples apart."""
    if cfg.data.packing is not None:
        return cfg.data.packing
    packing = stage_packs and attention is not None
    say(f"batches: {'padding-free (data.packing: auto)' if packing else 'padded rows (data.packing: auto)'}")
    return packing


def _padding_free_attention(base, packing: bool):
    """Packed rows attend sample by sample with causal SDPA (ember.models.segment_attention) where the model
    supports it; otherwise transformers keeps the samples apart (a flash kernel's variable-length path, else the
    block-diagonal mask)."""
    import contextlib

    from ember.models.segment_attention import segment_attention

    return segment_attention(base) if packing else contextlib.nullcontext()


def _upload_callbacks(cfg: EmberConfig) -> list[Any]:
    if not (cfg.output.push_to_hub and cfg.output.push_strategy == "every_save"):
        return []
    from ember.training.hub import CheckpointUpload

    return [CheckpointUpload(cfg, say)]


def _no_train_samples(cfg: EmberConfig, held_out: int) -> str:
    causes = [f"data.eval_split={cfg.data.eval_split}"] if cfg.data.eval_split else []
    causes += [f"split: eval for {spec.path}" for spec in cfg.data.datasets if spec.split == "eval"]
    return (f"no training samples: the data gave {held_out} evaluation samples and none to train on"
            f"{' (' + ', '.join(causes) + ')' if causes else ''}; lower data.eval_split or add a dataset with split: "
            "train")


def _plan_line(cfg: EmberConfig) -> str:
    """`ember plan`'s one-line verdict for this machine: from the model's config on the meta device, no weights."""
    from ember.planning import machine_target, plan, summary_line

    try:
        return summary_line(plan(cfg, machine_target()))
    except Exception as exc:  # noqa: BLE001 - advice only: a model the planner cannot describe still trains
        return f"plan: not available ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"


def _stopped_message(guard, cfg: EmberConfig) -> str:
    from ember.training import checkpoints

    newest = checkpoints.scan(Path(cfg.output.dir)).newest
    kept = (f"The newest complete checkpoint, {newest}, is kept (train.resume_from_checkpoint=auto continues from it "
            "once the cause is fixed)" if newest else "No checkpoint had been written")
    if guard.stopped_nonfinite:
        hint = ("look for extreme values in the data (loss weights) or lower train.learning_rate; "
                "train.on_nonfinite=skip_step drops such steps instead of stopping")
    else:
        hint = (f"lower train.learning_rate (now {cfg.train.learning_rate:g}) or look at the data of that step; "
                "train.loss_spike_factor=null turns this check off")
    return f"training stopped at {guard.stopped}. Nothing after it was saved. {kept}. To fix: {hint}"


def _template_record(renderer, cfg: EmberConfig) -> Optional[dict]:
    """The renderer's identity, plus the system prompt that training gave conversations without one: chat, serve
    and eval give it too, so the model is asked the way it was trained."""
    if renderer is None:
        return None
    record = dict(renderer.identity)
    if cfg.data.system:
        record["default_system"] = cfg.data.system
    return record


def _fit_embeddings(model, tokenizer, added: Sequence[int]) -> list[int]:
    """Grow the embeddings to the tokenizer (template tokens, an extended vocabulary). Returns the rows no training
    has shaped: those of tokens the template added, and every row the resize created (also the padding rows, so
    that what is saved and served does not depend on how the resize drew them)."""
    rows = model.get_input_embeddings().num_embeddings  # not weight.shape: ZeRO-3 leaves each rank a shard
    new = sorted(i for i in added if i < rows)
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer), pad_to_multiple_of=64)
        new += list(range(rows, model.get_input_embeddings().num_embeddings))
    return new


def _rows_to_train(rows: list[int], cfg: EmberConfig) -> list[int]:
    """The new rows that train as their own parameters: with LoRA, unless the config trains both matrices whole."""
    from ember.models.adapters import EMBEDDING_NAMES

    if not rows:
        return []
    method = cfg.method
    if method.type in ("lora", "qlora") and not any(n in EMBEDDING_NAMES for n in method.modules_to_save):
        say(f"training only the {len(rows)} new embedding rows (ids {rows[0]}..{rows[-1]}) of embed_tokens and "
            "lm_head beside the adapter (PEFT trainable tokens); method.modules_to_save: [embed_tokens, lm_head] "
            "trains the whole matrices")
        return rows
    if method.type == "freeze" and not any(n in m for m in method.trainable_modules for n in EMBEDDING_NAMES):
        say(f"warning: method.type=freeze leaves the {len(rows)} new embedding rows as initialised (untrained): add "
            "embed_tokens and lm_head to method.trainable_modules to train them")
    return []


def _schedule_warnings(cfg: EmberConfig, samples: int, world_size: int) -> list[str]:
    """A warmup that never ends within the run: the learning rate would never reach train.learning_rate."""
    t = cfg.train
    batches = math.ceil(samples / (t.per_device_train_batch_size * max(world_size, 1)))
    per_epoch = max(math.ceil(batches / t.gradient_accumulation_steps), 1)
    total = t.max_steps if t.max_steps > 0 else math.ceil(t.num_train_epochs * per_epoch)
    warmup = math.ceil(t.warmup_ratio * total) if t.warmup_ratio else t.warmup_steps
    if warmup < total:
        return []
    given = f"train.warmup_ratio={t.warmup_ratio:g}" if t.warmup_ratio else f"train.warmup_steps={t.warmup_steps}"
    return [f"{given} is {warmup} steps but the run has {total} optimizer steps: the learning rate never reaches "
            f"train.learning_rate={t.learning_rate:g} (at most {t.learning_rate * total / warmup:.3g}); lower the "
            "warmup or train longer"]


def _optimizer(model, args, cfg: EmberConfig):
    """None (the Trainer builds `train.optim`) unless embeddings get their own learning rate."""
    lr = cfg.method.embedding_learning_rate
    if lr is None:
        return None
    from transformers import Trainer

    from ember.models.adapters import embedding_parameters

    embeddings = embedding_parameters(model)
    if not embeddings:
        raise ConfigError("method.embedding_learning_rate is set but no embedding / lm_head parameter is trainable")
    ids = {id(p) for p in embeddings}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in ids]
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    kwargs.pop("lr", None)

    def split(params, group_lr):
        # train.weight_decay as the Trainer's own optimizer applies it (matrices decay; norms and biases do not).
        # Without it in the groups, torch's AdamW would decay everything by its default of 0.01.
        return [{"params": [p for p in params if p.ndim >= 2], "lr": group_lr, "weight_decay": args.weight_decay},
                {"params": [p for p in params if p.ndim < 2], "lr": group_lr, "weight_decay": 0.0}]

    groups = [g for g in split(rest, args.learning_rate) + split(embeddings, lr) if g["params"]]
    return cls(groups, lr=args.learning_rate, **kwargs)
