"""Cross-field rules, checked once before any tokenizer or weight is loaded."""

from __future__ import annotations

import importlib.util
import math

from ember.config.schema import EmberConfig
from ember.errors import ConfigError


def validate(cfg: EmberConfig) -> EmberConfig:
    data, method, train = cfg.data, cfg.method, cfg.train
    if cfg.stage != "pt" and not data.datasets:
        raise ConfigError("data.datasets is empty: add at least one {path: FILE} entry")
    if data.max_length < 8:
        raise ConfigError(f"data.max_length={data.max_length} is too small (use at least 8)")
    if not 0.0 <= data.eval_split < 1.0:
        raise ConfigError(f"data.eval_split={data.eval_split} must be in [0, 1)")
    for i, spec in enumerate(data.datasets):
        if spec.samples is not None and spec.ratio is not None:
            raise ConfigError(f"data.datasets[{i}] ({spec.path}): give either samples or ratio, not both")
        if spec.ratio is not None and spec.ratio <= 0:
            raise ConfigError(f"data.datasets[{i}] ({spec.path}): ratio must be > 0")
        if spec.samples is not None and spec.samples <= 0:
            raise ConfigError(f"data.datasets[{i}] ({spec.path}): samples must be > 0")
        if cfg.stage == "sft" and spec.format == "text":
            raise ConfigError(f"data.datasets[{i}] ({spec.path}): format 'text' is raw text; use stage: pt")
        _check_stage_format(cfg.stage, i, spec)
    if data.num_proc is not None and data.num_proc < 1:
        raise ConfigError("data.num_proc must be >= 1 (or unset: the machine's cores)")
    if data.max_record_bytes < 1024:
        raise ConfigError(f"data.max_record_bytes={data.max_record_bytes} is too small (use at least 1024)")

    if method.type == "qlora":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise ConfigError(
                "method.type=qlora needs bitsandbytes: pip install 'ember[qlora]' (or bitsandbytes), "
                "or use method.type=lora"
            )
    else:
        quantized = {k: getattr(method, k) for k in ("bits", "quant_type", "double_quant")
                     if getattr(method, k) is not None}
        if method.compute_dtype != "auto":
            quantized["compute_dtype"] = method.compute_dtype
        if quantized:
            given = ", ".join(f"method.{k}={v}" for k, v in quantized.items())
            raise ConfigError(
                f"{given} quantizes the base model, which only method.type=qlora does (LoRA on a frozen 4/8-bit "
                f"model; a quantized model cannot be tuned with method.type={method.type}): set method.type=qlora "
                "or remove them"
            )
    if method.type in ("lora", "qlora"):
        if method.rank < 1:
            raise ConfigError(f"method.rank={method.rank} must be >= 1")
        if not (method.targets in ("all-linear", "family") or isinstance(method.targets, list)):
            raise ConfigError(f"method.targets must be 'all-linear', 'family' (the model family's lora_targets) or a "
                              f"list of module names, got {method.targets!r}")
        if method.lora_layers is not None and method.lora_layers < 1:
            raise ConfigError(f"method.lora_layers={method.lora_layers} must be >= 1 (or unset for every layer)")
    elif method.dora or method.rslora or method.lora_layers is not None:
        raise ConfigError(f"method.dora / method.rslora / method.lora_layers apply to LoRA, not method.type={method.type}")
    if method.type == "freeze" and method.trainable_layers < 0:
        raise ConfigError("method.trainable_layers must be >= 0")

    if cfg.stage in PREFERENCE_STAGES:
        _check_preference(cfg)

    if train.bf16 and train.fp16:
        raise ConfigError("train.bf16 and train.fp16 are both true: choose one")
    _check_numbers(train, method.embedding_learning_rate)
    _check_reporting(train)
    _check_extra(train)
    if train.eval_strategy != "no" and data.eval_split == 0 and not any(s.split == "eval" for s in data.datasets):
        raise ConfigError(
            f"train.eval_strategy={train.eval_strategy} but there is no validation data: "
            "set data.eval_split (e.g. 0.05) or add a dataset with split: eval"
        )
    if train.deepspeed:
        _check_deepspeed(train.deepspeed)
    _check_hub(cfg)
    _check_device_map(cfg)
    _check_hardware(cfg)
    return cfg


def _check_hub(cfg: EmberConfig) -> None:
    repo = cfg.output.push_to_hub
    if repo is not None and (repo.count("/") != 1 or repo.startswith("/") or repo.endswith("/") or " " in repo):
        raise ConfigError(f"output.push_to_hub={repo!r} is not a repository id: write ORG/NAME (e.g. alice/my-lora)")
    if (repo is not None and cfg.output.hub == "modelscope") or cfg.model.hub == "modelscope" or any(
            name and name.startswith("modelscope:") for name in (cfg.model.name_or_path, cfg.model.tokenizer)):
        if importlib.util.find_spec("modelscope") is None:
            raise ConfigError("ModelScope (model.hub / a modelscope: id / output.hub) needs the modelscope package: "
                              "pip install 'ember[modelscope]'")


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def _check_device_map(cfg: EmberConfig) -> None:
    """Naive model parallelism: one process runs layers spread over the GPUs; every launcher that starts a process
    per GPU (torchrun, accelerate, DeepSpeed, FSDP) places whole copies or shards instead."""
    import os

    model = cfg.model
    if model.device_map is None:
        if model.max_memory:
            raise ConfigError("model.max_memory applies with model.device_map (e.g. auto); set both or neither")
        return
    if model.device_map not in DEVICE_MAPS:
        raise ConfigError(f"model.device_map={model.device_map!r}: choose one of {', '.join(DEVICE_MAPS)}")
    if model.random_init:
        raise ConfigError("model.device_map places loaded weights; a random_init model is built on one device: "
                          "remove model.device_map (or save the model and load it)")
    sharded = [name for name, on in (
        ("train.deepspeed", bool(cfg.train.deepspeed)),
        ("FSDP (train.extra.fsdp / accelerate)", bool(cfg.train.extra.get("fsdp"))
         or os.environ.get("ACCELERATE_USE_FSDP", "").lower() == "true"),
        ("DeepSpeed (accelerate)", os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"),
        (f"{os.environ.get('WORLD_SIZE')} processes (torchrun / accelerate launch)",
         int(os.environ.get("WORLD_SIZE", "1")) > 1)) if on]
    if sharded:
        raise ConfigError(
            f"model.device_map={model.device_map} splits one model over the GPUs inside one process, which cannot "
            f"be combined with {sharded[0]}: run a single process (`ember train`, no launcher) or remove "
            "model.device_map")


def _check_numbers(train, embedding_lr=None) -> None:
    """Hyper-parameters no run can use: caught here rather than as a traceback (or a silent no-op) after loading.
    A learning rate of 0 is allowed only beside a positive method.embedding_learning_rate (train the new rows only)."""
    lr = train.learning_rate
    only_embeddings = lr == 0 and embedding_lr is not None and embedding_lr > 0
    if not math.isfinite(lr) or lr < 0 or (lr == 0 and not only_embeddings):
        raise ConfigError(f"train.learning_rate={lr} must be a positive number (fine-tuning uses 1e-5 to 1e-3)")
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                "logging_steps"):
        if getattr(train, key) < 1:
            raise ConfigError(f"train.{key}={getattr(train, key)} must be >= 1")
    if train.max_steps == 0 or train.max_steps < -1:
        raise ConfigError(f"train.max_steps={train.max_steps} must be > 0, or -1 to train train.num_train_epochs")
    if train.max_steps == -1 and not (math.isfinite(train.num_train_epochs) and train.num_train_epochs > 0):
        raise ConfigError(f"train.num_train_epochs={train.num_train_epochs} must be > 0 (or set train.max_steps)")
    if not 0.0 <= train.warmup_ratio < 1.0:
        raise ConfigError(f"train.warmup_ratio={train.warmup_ratio} must be in [0, 1)")
    if train.warmup_steps < 0:
        raise ConfigError(f"train.warmup_steps={train.warmup_steps} must be >= 0")
    for key in ("weight_decay", "max_grad_norm"):
        value = getattr(train, key)
        if not math.isfinite(value) or value < 0:
            raise ConfigError(f"train.{key}={value} must be a finite number >= 0")
    if train.save_strategy == "steps" and train.save_steps < 1:
        raise ConfigError(f"train.save_steps={train.save_steps} must be >= 1 (or train.save_strategy=no)")
    if train.eval_steps is not None and train.eval_steps < 1:
        raise ConfigError(f"train.eval_steps={train.eval_steps} must be >= 1 (or unset: train.logging_steps)")
    if train.save_total_limit is not None and train.save_total_limit < 1:
        raise ConfigError(f"train.save_total_limit={train.save_total_limit} must be >= 1, or null to keep every checkpoint")
    if train.dataloader_num_workers < 0:
        raise ConfigError(f"train.dataloader_num_workers={train.dataloader_num_workers} must be >= 0")
    factor = train.loss_spike_factor
    if factor is not None and not (math.isfinite(factor) and factor > 1):
        raise ConfigError(f"train.loss_spike_factor={factor} must be a number > 1, or null to turn the divergence "
                          "checks off")
    if train.on_nonfinite == "skip_step" and train.deepspeed:
        raise ConfigError("train.on_nonfinite=skip_step cannot drop a step under DeepSpeed (its engine steps the "
                          "optimizer itself): use train.on_nonfinite=stop")


PREFERENCE_STAGES = ("dpo", "orpo", "simpo", "kto")
_PAIR_FORMATS = ("auto", "sharegpt", "alpaca", "pairs")  # conversations/instruction/prompt + chosen + rejected


def _check_stage_format(stage: str, i: int, spec) -> None:
    where = f"data.datasets[{i}] ({spec.path}): format '{spec.format}'"
    if stage in ("sft", "pt") and spec.format in ("pairs", "kto"):
        raise ConfigError(f"{where} is preference data: use stage: dpo, orpo or simpo (pairs) or kto (kto)")
    if stage == "kto" and spec.format not in ("auto", "kto"):
        raise ConfigError(f"{where}: stage kto reads {{messages, label}} records; set format: kto (or auto)")
    if stage in PREFERENCE_STAGES and stage != "kto" and spec.format not in _PAIR_FORMATS:
        raise ConfigError(f"{where}: stage {stage} reads a prompt with a chosen and a rejected answer; set format "
                          f"to one of {', '.join(_PAIR_FORMATS)}")


def _check_preference(cfg: EmberConfig) -> None:
    pref, stage = cfg.preference, cfg.stage
    if not (math.isfinite(pref.beta) and pref.beta > 0):
        raise ConfigError(f"preference.beta={pref.beta} must be a number > 0 (dpo usually 0.1; simpo 2.0)")
    if not 0.0 <= pref.label_smoothing < 0.5:
        raise ConfigError(f"preference.label_smoothing={pref.label_smoothing} must be in [0, 0.5)")
    if pref.label_smoothing and not (stage == "simpo" or (stage == "dpo" and pref.loss_type == "sigmoid")):
        raise ConfigError(f"preference.label_smoothing applies to dpo (loss_type sigmoid) and simpo, not to stage "
                          f"{stage}" + (f" with loss_type {pref.loss_type}" if stage == "dpo" else "")
                          + ": set it to 0")
    if pref.loss_type != "sigmoid" and stage != "dpo":
        raise ConfigError(f"preference.loss_type={pref.loss_type} applies to stage dpo only")
    if not (math.isfinite(pref.simpo_gamma) and pref.simpo_gamma >= 0):
        raise ConfigError(f"preference.simpo_gamma={pref.simpo_gamma} must be a number >= 0")
    for key in ("kto_desirable_weight", "kto_undesirable_weight"):
        value = getattr(pref, key)
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"preference.{key}={value} must be a number > 0")
    if pref.precompute_ref and stage in ("orpo", "simpo"):
        raise ConfigError(f"preference.precompute_ref: stage {stage} uses no reference model; set it to false")
    if cfg.data.truncation in ("left", "right"):
        raise ConfigError(
            f"data.truncation={cfg.data.truncation} would cut answers or their end-of-turn tokens; preference stages "
            "cut the prompt first (data.truncation: split or turns, the same rule) or drop long pairs (drop)")
    if cfg.train.group_by_length:
        raise ConfigError(f"train.group_by_length groups single sequences; stage {stage} batches pairs of them: set "
                          "it to false (data.packing: true avoids padding instead)")


# train.report_to names (transformers' integrations) → the module each needs
_REPORTERS = {"azure_ml": "azureml", "clearml": "clearml", "codecarbon": "codecarbon", "comet_ml": "comet_ml",
              "dagshub": "dagshub", "dvclive": "dvclive", "flyte": "flytekit", "kubeflow": "kubeflow",
              "mlflow": "mlflow", "neptune": "neptune", "swanlab": "swanlab", "tensorboard": "tensorboard",
              "trackio": "trackio", "wandb": "wandb"}


def _check_reporting(train) -> None:
    """Loggers and uploads that would otherwise fail when the Trainer is built, after the model has loaded."""
    names = [train.report_to] if isinstance(train.report_to, str) or train.report_to is None else train.report_to
    for name in names:
        if name in (None, "none", "all"):
            continue
        if name not in _REPORTERS:
            raise ConfigError(f"train.report_to: '{name}' is not a logger transformers knows; choose from "
                              f"{', '.join(sorted(_REPORTERS))}, or none")
        module = _REPORTERS[name]
        found = importlib.util.find_spec(module) or (name == "tensorboard" and importlib.util.find_spec("tensorboardX"))
        if not found:
            raise ConfigError(f"train.report_to={name} needs the '{module}' package, which is not installed: "
                              f"pip install {module} (or train.report_to=none)")
    hub_keys = [k for k in ("push_to_hub", "hub_model_id", "hub_strategy", "hub_private_repo") if k in train.extra]
    if hub_keys:
        raise ConfigError(
            f"train.extra.{hub_keys[0]}: the Trainer's own upload is not used (it can push a checkpoint while it is "
            "still being written); set output.push_to_hub: ORG/NAME instead (with output.hub, output.hub_private, "
            "output.push_strategy: end | every_save), and remove train.extra." + ", train.extra.".join(hub_keys)
        )


# TrainingArguments the typed config sets under another name (ember.training.arguments)
_SET_ELSEWHERE = {"output_dir": "output.dir"}
# Annotated str, but TrainingArguments reads more: fsdp also takes a list of options (or true)
_WIDER_THAN_ANNOTATED = {"fsdp"}


def _check_extra(train) -> None:
    """train.extra goes to TrainingArguments as is: a key that shadows a typed one would skip that key's checks, and a
    value of the wrong type would fail only after the model has loaded."""
    if not train.extra:
        return
    import dataclasses
    import difflib
    import types
    import typing

    from transformers import TrainingArguments

    from ember.config.loader import coerce

    typed = {f.name: f"train.{f.name}" for f in dataclasses.fields(train) if f.name != "extra"} | _SET_ELSEWHERE
    hints = typing.get_type_hints(TrainingArguments)
    fields = {f.name: hints[f.name] for f in dataclasses.fields(TrainingArguments) if f.init}
    for key, value in train.extra.items():
        if key in typed:
            raise ConfigError(f"train.extra.{key} would override {typed[key]} and skip its checks: set "
                              f"{typed[key]}={value} instead and remove train.extra.{key}")
        if key not in fields:
            close = difflib.get_close_matches(key, sorted(fields), n=1)
            raise ConfigError(f"train.extra.{key} is not a TrainingArguments field"
                              + (f"; did you mean '{close[0]}'?" if close else ""))
        tp = fields[key]
        union = typing.get_origin(tp) in (typing.Union, types.UnionType)
        kinds = [a for a in typing.get_args(tp) if a is not type(None)] if union else [tp]
        # Only plain annotations are checked: enums, dicts and classes take forms TrainingArguments converts itself.
        if key not in _WIDER_THAN_ANNOTATED and all(k in (bool, int, float, str) for k in kinds):
            # stored converted: YAML 1.1 reads `adam_epsilon: 1e-8` (no dot) as a string
            train.extra[key] = coerce(tp, value, f"train.extra.{key}")


def config_warnings(cfg: EmberConfig) -> list[str]:
    """Valid but almost certainly unintended settings, printed before anything loads."""
    out = []
    lr = cfg.train.learning_rate
    if lr > 0.1:
        out.append(f"train.learning_rate={lr:g} is far above what fine-tuning uses (1e-5 to 1e-3): expect the run to "
                   "diverge (the divergence guard stops it; see train.loss_spike_factor)")
    return out


def _check_deepspeed(path: str) -> None:
    import json
    from pathlib import Path

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"train.deepspeed: {path} is not a file: give a DeepSpeed JSON (examples/deepspeed/)")
    try:
        json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"train.deepspeed: {path} is not valid JSON: {exc}") from None
    if importlib.util.find_spec("deepspeed") is None:
        raise ConfigError(f"train.deepspeed={path} needs DeepSpeed: pip install deepspeed (or remove train.deepspeed)")


def _check_hardware(cfg: EmberConfig) -> None:
    """Fail early on precision choices this machine cannot run."""
    import torch

    train = cfg.train
    has_cuda = torch.cuda.is_available()
    if train.fp16 and not has_cuda:
        raise ConfigError("train.fp16=true needs a CUDA GPU; on CPU use train.bf16=true (or leave it unset: auto)")
    if train.bf16:
        from ember.core.hardware import bf16_supported

        if not bf16_supported():
            raise ConfigError("train.bf16=true but this machine does not support bfloat16; leave it unset (auto)")
