"""`plan(cfg, target)`: will this run fit, and if not, the cheapest change that does (itself planned and checked)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ember.config import apply_override, from_dict, to_dict
from ember.config.schema import EmberConfig
from ember.planning.architecture import ModelShape, describe
from ember.planning.memory import Memory, Target, ZeRO, estimate_memory, precision, read_zero


@dataclass
class Change:
    """A change to the config, as dotted overrides for `ember train`, and the plan it leads to."""

    description: str
    overrides: list[str]
    plan: "Plan"
    cost: int


# PyTorch's caching allocator reserves more GPU memory than it hands out (blocks kept for reuse, fragmentation by
# large transient tensors such as fp32 logits). Measured on an H200 (bench/results/gpu_check.md): reserved was 21%
# (8B LoRA) and 32% (8B full) above the allocated peak, and a plan that filled 83% of the card with allocations ran
# out of memory. A GPU plan fits when its peak plus this share fits.
GPU_ALLOCATOR_HEADROOM = 0.25


@dataclass
class Plan:
    cfg: EmberConfig
    target: Target
    shape: ModelShape
    zero: Optional[ZeRO]
    memory: Memory
    precision: str
    suggestion: Optional[Change] = None
    searched: bool = False  # whether a change was looked for (only when it does not fit)
    notes: list[str] = field(default_factory=list)

    @property
    def headroom(self) -> int:
        """Bytes the GPU's caching allocator holds beyond the allocated peak (0 on a CPU, whose peak is RSS)."""
        if not self.target.gpu:
            return 0
        # the CUDA context lives outside the allocator: no headroom on it
        return int((self.memory.peak - self.memory.parts.get("cuda_context", 0)) * GPU_ALLOCATOR_HEADROOM)

    @property
    def needs(self) -> int:
        return self.memory.peak + self.headroom

    @property
    def fits(self) -> bool:
        return self.needs <= self.target.memory

    @property
    def tokens_per_micro_batch(self) -> int:
        return self.cfg.train.per_device_train_batch_size * self.cfg.data.max_length

    @property
    def tokens_per_step(self) -> int:
        return self.tokens_per_micro_batch * self.cfg.train.gradient_accumulation_steps * self.target.devices


def machine_target(devices: Optional[int] = None) -> Target:
    """This machine: its GPUs, or its CPU and RAM shared by `devices` processes (WORLD_SIZE under torchrun)."""
    import torch

    n = devices or int(os.environ.get("WORLD_SIZE", "0"))
    if torch.cuda.is_available():
        return Target(True, n or torch.cuda.device_count(), torch.cuda.get_device_properties(0).total_memory)
    return Target(False, n or 1, ram_bytes() // (n or 1))


def ram_bytes() -> int:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def plan(cfg: EmberConfig, target: Target, suggest: bool = True, zero: Optional[ZeRO] = None,
         shape: Optional[ModelShape] = None, chunked_loss: Optional[bool] = None) -> Plan:
    """Predict the peak memory per device of `ember train cfg` on `target`, reading only the model's config.

    Args:
        cfg: a validated config.
        target: the devices (see `machine_target`).
        suggest: when it does not fit, search the cheapest change that does.
        zero: plan with this DeepSpeed setting instead of the one `train.deepspeed` names.
        shape: the tuned model, when already described (alternatives that keep the method reuse it).
        chunked_loss: plan Ember's chunked loss (True) or the plain loss over the model's logits (False, as other
            tools compute it); None: the one `ember train` takes for this run.

    Raises:
        ConfigError: the model's config cannot be read or built, or train.deepspeed is unreadable.
    """
    zero = zero if zero is not None else read_zero(cfg.train.deepspeed)
    shape = shape or describe(cfg, target.gpu)
    memory = estimate_memory(cfg, shape, target, zero, chunked_loss)
    result = Plan(cfg, target, shape, zero, memory, _precision_label(cfg, shape, target, zero))
    if not target.gpu:
        result.notes.append("this counts live memory: with glibc's default allocator freed heap memory stays with "
                            "the process and peak RSS ran 0.2-1.9 GiB higher in docs/training.md's validation (most "
                            "with QLoRA); starting with MALLOC_MMAP_THRESHOLD_=65536 gives it back at once, at a "
                            "cost in time (runs took 1.4-1.8x as long there)")
    if not target.gpu and cfg.method.type == "qlora":
        result.notes.append("loading quantizes the full-precision checkpoint read through a memory map: its pages "
                            "count in RSS while it loads, above this peak (page cache the kernel reclaims under "
                            "pressure; SmolLM2 in docs/training.md's validation: 0.59 GiB at load, 0.41 training)")
    if suggest and not result.fits:
        result.searched = True
        result.suggestion = cheapest_fit(result)
    return result


def _precision_label(cfg: EmberConfig, shape: ModelShape, target: Target, zero: Optional[ZeRO]) -> str:
    prec = precision(cfg, shape, target, zero)
    dtypes = sorted({g.dtype for g in shape.groups if not g.trainable} or {g.dtype for g in shape.groups})
    text = f"{'/'.join(dtypes)} weights"
    if prec.weight_bytes == 2:
        text += ", DeepSpeed 16-bit"
    elif prec.autocast:
        text += f", {'fp16' if cfg.train.fp16 else 'bf16'} autocast"
    else:
        text += f", {'fp32' if prec.compute_bytes == 4 else '16-bit'} compute"
    return text + f"; {shape.attention} attention"


# -- the search -----------------------------------------------------------------------------------------------

_ZERO_FILES = {(2, False): "examples/deepspeed/zero2.json", (3, False): "examples/deepspeed/zero3.json",
               (2, True): "examples/deepspeed/zero2_offload.json", (3, True): "examples/deepspeed/zero3_offload.json"}


def cheapest_fit(base: Plan) -> Optional[Change]:
    """Try changes from cheapest to dearest (a rough price in lost speed or changed results) and return the first
    whose own plan fits. Halving the micro-batch keeps the global batch through gradient accumulation."""
    options = []
    for structure in _structures(base):
        for halvings, batch_changes in enumerate(_smaller_batches(base.cfg)):
            options.append((structure[0] + halvings, structure, halvings, batch_changes))
    options.sort(key=lambda o: o[0])
    shapes: dict[str, ModelShape] = {}
    for cost, (_, description, overrides, zero), halvings, batch_changes in options:
        if not overrides and not batch_changes and zero == base.zero:
            continue
        cfg = _apply(base.cfg, [*batch_changes, *overrides])
        method = cfg.method.type
        if method == base.cfg.method.type:
            shape = base.shape
        else:
            shape = shapes.get(method) or describe(cfg, base.target.gpu)
            shapes[method] = shape
        candidate = plan(cfg, base.target, suggest=False, zero=zero, shape=shape)
        if candidate.fits:
            parts = ([f"micro-batch {cfg.train.per_device_train_batch_size} × accumulation "
                      f"{cfg.train.gradient_accumulation_steps} (the same samples per step)"] if halvings else [])
            parts += [description] if description else []
            all_overrides = [*batch_changes, *overrides]
            if zero is not None and zero != base.zero and not any(o.startswith("train.deepspeed=") for o in overrides):
                parts.append(f"(a DeepSpeed JSON with zero_optimization.stage {zero.stage}"
                             f"{', offload_optimizer.device cpu' if zero.offload_optimizer else ''}"
                             f"{', offload_param.device cpu' if zero.offload_params else ''})")
            return Change(" + ".join(parts), all_overrides, candidate, cost)
    return None


def _structures(base: Plan) -> list[tuple[int, str, list[str], Optional[ZeRO]]]:
    """(price, description, overrides, DeepSpeed setting) for each structural change, cheapest first."""
    cfg, target, zero = base.cfg, base.target, base.zero
    gc_on = cfg.train.gradient_checkpointing
    out: list[tuple[int, str, list[str], Optional[ZeRO]]] = [(0, "", [], zero)]
    if not gc_on:
        out.append((3, "gradient checkpointing", ["train.gradient_checkpointing=true"], zero))
    zeros: list[tuple[int, ZeRO]] = []
    if target.gpu and target.devices > 1:
        zeros += [(1, ZeRO(2)), (3, ZeRO(3))]
    if target.gpu:
        zeros += [(5, ZeRO(2, offload_optimizer=True)), (6, ZeRO(3, offload_optimizer=True)),
                  (9, ZeRO(3, offload_optimizer=True, offload_params=True))]
    for price, z in zeros:
        if zero is not None and (zero.stage, zero.offload_optimizer, zero.offload_params) >= (
                z.stage, z.offload_optimizer, z.offload_params):
            continue
        changes = _deepspeed_override(z)
        out.append((price, z.describe(), changes, z))
        if not gc_on:
            out.append((price + 3, z.describe() + " + gradient checkpointing",
                        changes + ["train.gradient_checkpointing=true"], z))
    methods = []
    if cfg.method.type == "lora" and _has_bitsandbytes():
        methods.append((4, "QLoRA (4-bit base)", ["method.type=qlora"]))
    if cfg.method.type in ("full", "freeze"):
        methods.append((8, "LoRA instead of full tuning", ["method.type=lora"]))
        if _has_bitsandbytes():
            methods.append((10, "QLoRA (4-bit base)", ["method.type=qlora"]))
    for price, description, changes in methods:
        out.append((price, description, changes, zero))
        if not gc_on:
            out.append((price + 3, description + " + gradient checkpointing",
                        changes + ["train.gradient_checkpointing=true"], zero))
    return out


def _deepspeed_override(z: ZeRO) -> list[str]:
    path = _ZERO_FILES.get((z.stage, z.offload_optimizer)) if not z.offload_params else None
    return [f"train.deepspeed={path}"] if path and Path(path).is_file() else []


def _smaller_batches(cfg: EmberConfig) -> list[list[str]]:
    """[[]] then the overrides for micro-batch b/2, b/4, ... 1, keeping batch × accumulation."""
    b, ga = cfg.train.per_device_train_batch_size, cfg.train.gradient_accumulation_steps
    out: list[list[str]] = [[]]
    while b > 1:
        b, ga = b // 2, ga * 2
        out.append([f"train.per_device_train_batch_size={b}", f"train.gradient_accumulation_steps={ga}"])
    return out


def _apply(cfg: EmberConfig, overrides: list[str]) -> EmberConfig:
    raw = to_dict(cfg)
    for item in overrides:
        if item.startswith("train.deepspeed="):
            continue  # the DeepSpeed setting travels as a ZeRO value; the file need not be readable here
        apply_override(raw, item)
    return from_dict(EmberConfig, raw, "plan")


def _has_bitsandbytes() -> bool:
    import importlib.util

    return importlib.util.find_spec("bitsandbytes") is not None
