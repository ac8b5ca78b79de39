"""A plan as text for a person (`ember plan`), one line (`ember train`) or JSON (`ember plan --json`)."""

from __future__ import annotations

from typing import Any

from ember.planning.memory import GIB, packs
from ember.planning.plan import GPU_ALLOCATOR_HEADROOM, Plan

PARTS = {
    "weights": "frozen parameters",
    "trainable": "trainable parameters",
    "gradients": "one per trainable parameter",
    "optimizer": "optimizer states (DeepSpeed: with fp32 master weights)",
    "activations": "tensors the forward pass keeps for backward",
    "autocast_copies": "16-bit copies of fp32 weights that backward needs",
    "logits": "the loss: a chunk of fp32 logits at a time (Ember's chunked loss), else all at trained positions",
    "backward_workspace": "one layer's gradients in flight (and its recomputation)",
    "optimizer_temporaries": "the optimizer step's temporaries",
    "ddp_buckets": "DDP's gradient buckets",
    "zero3_gathered": "the largest module, gathered whole by ZeRO-3",
    "cuda_context": "CUDA context and cuBLAS workspace (outside PyTorch's allocator)",
}


def gib(n: int) -> str:
    return f"{n / GIB:.2f} GiB"


def measure(plan: Plan) -> str:
    if plan.target.gpu:
        return "GPU memory per device"
    return "peak RSS per process above the interpreter and its libraries"


def method_text(plan: Plan) -> str:
    m = plan.cfg.method
    if m.type in ("lora", "qlora"):
        adapted = [lin for layer in plan.shape.layers for lin in layer.linears if lin.lora_rank]
        where = (f" in the top {m.lora_layers} of {len(plan.shape.layers)} layers" if m.lora_layers else "")
        base = f"{m.bits or 4}-bit {m.quant_type or 'nf4'} base + " if m.type == "qlora" and (m.bits or 4) == 4 else (
            "8-bit base + " if m.type == "qlora" else "")
        return f"{base}LoRA r{m.rank} on {len(adapted)} linears{where}"
    if m.type == "freeze":
        return f"freeze: train {'modules ' + ', '.join(m.trainable_modules) if m.trainable_modules else f'the last {m.trainable_layers} layers'}"
    return "full tuning"


def summary_line(plan: Plan) -> str:
    """One line: the peak, whether it fits, and the cheapest fix when it does not."""
    peak = f"{gib(plan.memory.peak)} peak per {'device' if plan.target.gpu else 'process'}"
    head = f"plan: {peak} on {plan.target.describe()}"
    if plan.fits:
        return f"{head}: fits; up to {plan.tokens_per_step:,} tokens per step"
    line = f"{head}: does NOT fit"
    if plan.suggestion is not None:
        line += (f"; cheapest change that fits ({gib(plan.suggestion.plan.memory.peak)}): "
                 f"{' '.join(plan.suggestion.overrides) or plan.suggestion.description}")
    return line


def render(plan: Plan, config_path: str = "CFG") -> str:
    s, mem = plan.shape, plan.memory
    rows = [
        f"ember plan: {plan.cfg.model.name_or_path} ({s.model_type}, {len(s.layers)} layers, hidden {s.hidden}, "
        f"vocab {s.vocab}) on {plan.target.describe()}",
        f"  method     {method_text(plan)}"
        + (f"; {plan.zero.describe()} over {plan.target.devices} device(s)" if plan.zero else ""),
        f"  params     {s.total_params:,} total, {s.trainable_params:,} trainable",
        f"  precision  {plan.precision}",
        f"  tokens     {plan.cfg.train.per_device_train_batch_size} × {plan.cfg.data.max_length} per micro-batch"
        f"{' (packed)' if packs(plan.cfg, plan.shape) else ''}, {plan.tokens_per_step:,} per optimizer step "
        f"(× {plan.cfg.train.gradient_accumulation_steps} accumulation × {plan.target.devices} device(s)), at most",
        f"  peak       {gib(mem.peak)} ({measure(plan)}), at the "
        f"{'start of backward' if mem.phase == 'backward' else 'optimizer step'}; the "
        f"{'optimizer step' if mem.phase == 'backward' else 'start of backward'} needs "
        f"{gib(min(mem.phases.values()))}",
    ]
    for name, nbytes in sorted(mem.parts.items(), key=lambda kv: -kv[1]):
        rows.append(f"    {name:22s} {gib(nbytes):>11s}  {PARTS.get(name, '')}")
    if mem.offloaded:
        rows.append(f"    (offloaded to CPU RAM: {gib(mem.offloaded)} per device)")
    if plan.headroom:
        rows.append(f"    {'allocator headroom':22s} {gib(plan.headroom):>11s}  what PyTorch's caching allocator holds "
                    f"beyond the peak (+{GPU_ALLOCATOR_HEADROOM:.0%}, measured on an H200)")
    share = 100 * plan.needs / plan.target.memory
    if plan.fits:
        rows.append(f"fits on {plan.target.describe()}: {gib(plan.needs)} of {gib(plan.target.memory)} ({share:.0f}%)")
    else:
        rows.append(f"does NOT fit on {plan.target.describe()}: needs {gib(plan.needs)} of {gib(plan.target.memory)} "
                    f"per {'device' if plan.target.gpu else 'process'}")
        change = plan.suggestion
        if change is not None:
            rows.append(f"cheapest change that fits: {change.description} → {gib(change.plan.needs)} "
                        f"(re-planned)")
            if change.overrides:
                rows.append(f"  ember train {config_path} {' '.join(change.overrides)}")
        else:
            rows.append("no change tried fits (smaller micro-batch, checkpointing, QLoRA, ZeRO, offload): "
                        "shorten data.max_length or add devices")
    for note in [*mem.notes, *plan.notes]:
        rows.append(f"note: {note}")
    rows.append("(worst case: every row max_length tokens, every next token trained; docs/training.md, `ember plan`)")
    return "\n".join(rows)


def to_json(plan: Plan) -> dict[str, Any]:
    mem, s = plan.memory, plan.shape
    out: dict[str, Any] = {
        "peak_bytes_per_device": mem.peak,
        "reserved_bytes_per_device": plan.needs,  # the peak plus the GPU allocator's headroom: what must fit
        "fits": plan.fits,
        "parts": dict(mem.parts),
        "phase": mem.phase,
        "phases": dict(mem.phases),
        "target": {"kind": "gpu" if plan.target.gpu else "cpu", "devices": plan.target.devices,
                   "memory_bytes_per_device": plan.target.memory, "measure": measure(plan)},
        "params": {"total": s.total_params, "trainable": s.trainable_params},
        "precision": plan.precision,
        "tokens_per_micro_batch": plan.tokens_per_micro_batch,
        "tokens_per_step": plan.tokens_per_step,
        "activations": dict(mem.activations.breakdown) if mem.activations else {},
        "offloaded_bytes_per_device": mem.offloaded,
        "deepspeed": (None if plan.zero is None else {"stage": plan.zero.stage, "offload_optimizer": plan.zero.offload_optimizer,
                                                      "offload_params": plan.zero.offload_params}),
        "suggestion": None,
        "notes": [*mem.notes, *plan.notes],
    }
    if plan.suggestion is not None:
        change = plan.suggestion
        out["suggestion"] = {"description": change.description, "overrides": change.overrides,
                             "peak_bytes_per_device": change.plan.memory.peak, "fits": change.plan.fits}
    return out
