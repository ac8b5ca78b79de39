"""Per-device memory of a training step, part by part, at its two peaks: the start of backward (every activation
kept, logits at their largest) and the optimizer step (gradients, states and the optimizer's temporaries).

What each part holds, as `ember train` runs (transformers Trainer, peft, accelerate, DeepSpeed):
- weights: frozen parameters in the dtype they are loaded in (4/8-bit ones packed, with their scales).
- trainable: trainable parameters (peft keeps LoRA weights fp32 over a half-precision base).
- gradients: one per trainable parameter, in its dtype; present during backward only with gradient accumulation
  (the Trainer frees them after each optimizer step).
- optimizer: AdamW keeps two states per trainable parameter in its dtype (bitsandbytes 8-bit: one byte each;
  32-bit: fp32); present from the second step on.
- activations, autocast_copies, logits: see ember.planning.activations.
- DeepSpeed replaces the first four by its own accounting (DeepSpeed's estimators: 16-bit parameters and gradients,
  fp32 master weights, gradients and Adam states, 18 bytes per trainable parameter partitioned by the ZeRO stage).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ember.config.schema import EmberConfig
from ember.config.validate import PREFERENCE_STAGES
from ember.errors import ConfigError
from ember.planning.activations import Activations, Batch, Precision, estimate
from ember.planning.architecture import ModelShape

GIB = 1 << 30
# A CUDA context with PyTorch's kernels loaded, and cuBLAS's workspace: memory nvidia-smi shows that PyTorch's
# allocator does not count (about 0.5 GiB on recent GPUs with lazy module loading).
CUDA_CONTEXT = GIB // 2


@dataclass(frozen=True)
class Target:
    """Where the run goes: `devices` GPUs of `memory` bytes each, or a CPU (devices = processes sharing its RAM)."""

    gpu: bool
    devices: int
    memory: int  # per device: GPU memory, or the machine's RAM divided among the processes

    def describe(self) -> str:
        size = f"{self.memory / GIB:.0f} GiB" if self.memory >= 10 * GIB else f"{self.memory / GIB:.1f} GiB"
        if self.gpu:
            return f"{self.devices} × {size} GPU"
        return f"CPU, {size} RAM" + (f" per process ({self.devices} processes)" if self.devices > 1 else "")


@dataclass(frozen=True)
class ZeRO:
    """What a DeepSpeed config does to memory."""

    stage: int
    offload_optimizer: bool = False
    offload_params: bool = False
    half: Optional[bool] = None  # bf16/fp16 enabled; None = "auto" (follows train.bf16 / train.fp16)
    source: str = ""

    def describe(self) -> str:
        offload = [k for k, on in (("optimizer", self.offload_optimizer), ("parameters", self.offload_params)) if on]
        return f"DeepSpeed ZeRO-{self.stage}" + (f" with {' and '.join(offload)} offloaded to CPU" if offload else "")


def read_zero(path: Optional[str]) -> Optional[ZeRO]:
    if not path:
        return None
    p = Path(path)
    try:
        raw = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"train.deepspeed: cannot read {path} ({exc}): give a DeepSpeed JSON (examples/deepspeed/)") from None
    zero = raw.get("zero_optimization") or {}
    stage = zero.get("stage", 0)
    if stage not in (0, 1, 2, 3):
        raise ConfigError(f"train.deepspeed: {path} has zero_optimization.stage={stage!r}; use 0, 1, 2 or 3")

    def on(key: str) -> bool:
        return ((zero.get(key) or {}).get("device") or "none") in ("cpu", "nvme")

    def enabled(key: str) -> Optional[bool]:
        value = (raw.get(key) or {}).get("enabled", False)
        return None if value == "auto" else bool(value)

    half = [v for v in (enabled("bf16"), enabled("fp16")) if v is not False]
    return ZeRO(stage, on("offload_optimizer"), on("offload_param"), (True if True in half else None if half else False),
                source=str(path))


def optimizer_state_bytes(optim: str, param_bytes: int) -> tuple[int, Optional[str]]:
    """Bytes of optimizer state per trainable parameter for a `train.optim` name, and a note when guessed."""
    name = optim.lower()
    if "8bit" in name:
        return (1 if "lion" in name else 2), None
    if "32bit" in name:
        return (4 if "lion" in name else 8), None
    if "adafactor" in name:
        return 0, "Adafactor keeps factored (row + column) statistics: planned as none"
    if name.startswith("sgd"):
        return 0, None
    if "lion" in name or "adagrad" in name or "rmsprop" in name:
        return param_bytes, None
    if "adam" in name:
        return 2 * param_bytes, None
    return 2 * param_bytes, f"train.optim={optim}: planned as AdamW (two states per parameter)"


@dataclass
class Memory:
    parts: dict[str, int]  # per device, at the peak
    phases: dict[str, int]  # total per device at the start of backward and at the optimizer step
    peak: int
    phase: str
    offloaded: int = 0  # bytes DeepSpeed keeps in CPU RAM instead (per device's share)
    activations: Optional[Activations] = None
    notes: list[str] = field(default_factory=list)


def precision(cfg: EmberConfig, shape: ModelShape, target: Target, zero: Optional[ZeRO]) -> Precision:
    """The dtypes `ember train` computes in on the target (ember.training.arguments resolves bf16 the same way)."""
    from ember.core.hardware import bf16_supported

    t = cfg.train
    bf16_ok = True if target.gpu else bf16_supported()  # a GPU plan assumes a bf16-capable GPU (Ampere or later)
    bf16 = t.bf16 if t.bf16 is not None else (bf16_ok and not t.fp16 and cfg.method.type != "qlora")
    mixed = bool(bf16 or t.fp16)
    if zero is not None and (zero.half or (zero.half is None and mixed)):
        # DeepSpeed's bf16/fp16 engine casts the whole module to 16 bits and runs without autocast.
        return Precision(compute_bytes=2, autocast=False, residual_bytes=2, adapter_bytes=2, cuda=target.gpu,
                         weight_bytes=2)
    half = shape.residual_bytes == 2
    return Precision(compute_bytes=2 if (mixed or half) else 4, autocast=mixed, residual_bytes=shape.residual_bytes,
                     adapter_bytes=shape.adapter_bytes, cuda=target.gpu)


def packs(cfg: EmberConfig, shape: ModelShape) -> bool:
    """Whether `ember train` packs this run's micro-batches: `data.packing`, and for null what the run decides
    (ember.training.run._packing): the stage allows it (every stage but the preference ones, whose
    `Stage.packs_by_default` says no; image batches are padded, and an image-text model packs nothing) and the
    model's attention keeps packed samples apart without a mask (sample by sample, or a flash-attention kernel)."""
    if cfg.data.packing is not None:
        return cfg.data.packing
    return cfg.stage not in PREFERENCE_STAGES and shape.packs_without_mask


def chunked_loss(cfg: EmberConfig, shape: ModelShape, zero: Optional[ZeRO]) -> bool:
    """Whether `ember train` takes this run's loss chunk by chunk from the last hidden state (EmberTrainer): the
    causal-LM stages, logits that are the output embedding's projection, and that embedding whole on each device
    (not a ZeRO-3 or FSDP shard)."""
    sharded = (zero is not None and zero.stage == 3) or bool(cfg.train.extra.get("fsdp"))
    return shape.projected_logits and cfg.stage not in PREFERENCE_STAGES and not sharded


def estimate_memory(cfg: EmberConfig, shape: ModelShape, target: Target, zero: Optional[ZeRO],
                    chunked: Optional[bool] = None) -> Memory:
    """`chunked`: plan the chunked loss (True) or the plain one (False); None: the one `ember train` takes."""
    t = cfg.train
    packed = packs(cfg, shape)
    batch = Batch(t.per_device_train_batch_size, cfg.data.max_length, packed, segmented=packed and shape.segments)
    prec = precision(cfg, shape, target, zero)
    chunked = chunked_loss(cfg, shape, zero) if chunked is None else chunked
    act = estimate(shape, batch, prec, t.gradient_checkpointing, chunked_loss=chunked)
    notes = list(shape.notes)
    frozen = [g for g in shape.groups if not g.trainable]
    trainable = [g for g in shape.groups if g.trainable]
    n_trainable = sum(g.numel for g in trainable)

    if zero is None:
        weights = sum(g.bytes for g in frozen)
        params = sum(g.bytes for g in trainable)
        grads = params  # a gradient has its parameter's dtype
        per_param = {g.bytes // max(g.numel, 1) for g in trainable} or {4}
        state_bytes, note = optimizer_state_bytes(t.optim, max(per_param))
        states = state_bytes * n_trainable
        offloaded = 0
        # DDP keeps its gradient buckets beside the gradients (gradient_as_bucket_view is off by default).
        ddp = grads if target.devices > 1 else 0
        if note:
            notes.append(note)
        temporaries = _optimizer_temporaries(cfg, shape, target, state_bytes, n_trainable)
        gather = 0
    else:
        weights, params, grads, states, offloaded, gather = _zero_states(shape, zero, target.devices, prec)
        ddp = temporaries = 0
    accumulating = t.gradient_accumulation_steps > 1 or zero is not None
    context = CUDA_CONTEXT if target.gpu else 0
    transient = max(act.logits, (2 if t.gradient_checkpointing else 1) * act.layer)
    static = {"weights": weights, "trainable": params, "optimizer": states, "ddp_buckets": ddp,
              "zero3_gathered": gather, "cuda_context": context}
    backward = {**static, "gradients": grads if accumulating else 0, "activations": act.saved,
                "autocast_copies": act.autocast_copies, "logits": act.logits,
                "backward_workspace": transient - act.logits}
    step = {**static, "gradients": grads, "optimizer_temporaries": temporaries}
    phases = {"backward": sum(backward.values()), "optimizer_step": sum(step.values())}
    phase = max(phases, key=phases.get)
    parts = {k: v for k, v in (backward if phase == "backward" else step).items() if v}
    return Memory(parts=parts, phases=phases, peak=phases[phase], phase=phase, offloaded=offloaded,
                  activations=act, notes=notes)


def _optimizer_temporaries(cfg: EmberConfig, shape: ModelShape, target: Target, state_bytes: int, n: int) -> int:
    """torch's AdamW step: on a GPU the foreach kernels build one state-sized list (sqrt of the second moment);
    on a CPU the per-tensor loop holds two temporaries the size of the largest trainable tensor."""
    if state_bytes == 0 or "fused" in cfg.train.optim or "bnb" in cfg.train.optim or "8bit" in cfg.train.optim:
        return 0
    per_state = state_bytes // 2 if "adam" in cfg.train.optim.lower() else state_bytes
    if target.gpu:
        return per_state * n
    return 2 * per_state * shape.largest_trainable_tensor


def _zero_states(shape: ModelShape, zero: ZeRO, devices: int, prec: Precision) -> tuple[int, int, int, int, int, int]:
    """DeepSpeed's accounting (`estimate_zero2_model_states_mem_needs` and stage 3's estimator: 16-bit weights,
    then per trainable parameter 16-bit and fp32 gradients and 12 bytes of fp32 weights, momentum and variance)
    split into (frozen weights, trainable weights, gradients, optimizer, offloaded to CPU, ZeRO-3 gather buffer).
    Each piece is divided among the devices from the stage that partitions it on."""
    half = 2 if prec.weight_bytes == 2 else 4
    n_train = sum(g.numel for g in shape.groups if g.trainable)
    frozen = sum(g.numel * half if g.dtype in ("float32", "bfloat16", "float16") else g.bytes
                 for g in shape.groups if not g.trainable)
    stage = zero.stage

    def part(nbytes: int, from_stage: int) -> int:
        return nbytes // devices if stage >= from_stage else nbytes

    frozen, params = part(frozen, 3), part(half * n_train, 3)
    grads16 = 0 if stage == 3 else part(half * n_train, 2)  # ZeRO-3 reduces 16-bit gradients straight to fp32
    grads32, master = part(4 * n_train, 1), part(12 * n_train, 1)
    offloaded = 0
    if zero.offload_optimizer and stage >= 2:
        offloaded += grads32 + master + grads16
        grads16 = grads32 = master = 0
    if zero.offload_params and stage == 3:
        offloaded += frozen + params
        frozen = params = 0
    gather = 4 * shape.largest_layer_params if stage == 3 else 0  # one module's 16-bit weights and gradients
    return frozen, params, grads16 + grads32, master, offloaded, gather
