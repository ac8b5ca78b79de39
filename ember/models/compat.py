"""Version- and hardware-specific workarounds, each with the condition under which it can go.

bitsandbytes (checked with 0.50.2) on CPUs with AVX512-BF16: an eval-mode forward of `Linear4bit` repacks its weight
into an inference-only layout, after which the gradients through the frozen 4-bit weights are silently dropped
(see shared/notes/cpu-stack.md, Q1). We turn that repacking off through the layer's own public attribute.
Remove when bitsandbytes keeps training gradients after packing (tested by tests/training/test_qlora.py).
"""

from __future__ import annotations

import torch


def keep_4bit_trainable_on_cpu(model: torch.nn.Module) -> int:
    if torch.cuda.is_available():
        return 0
    try:
        import bitsandbytes as bnb
    except ImportError:
        return 0
    count = 0
    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit) and hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            count += 1
    return count


# gptqmodel's CPU layers (GPTQ, AWQ) that switch to an inference-only int4 kernel on the first eval forward
_SWITCHING_LAYERS = ("TorchAtenLinear", "TorchAtenAwqLinear")


def keep_gptq_trainable_on_cpu(model: torch.nn.Module) -> int:
    """gptqmodel (checked with 7.6.0), `TorchAtenLinear` (GPTQ) and `TorchAtenAwqLinear` (AWQ) on CPU: the first
    eval-mode forward without grad switches the layer for good to a bf16 int4 kernel that runs under `no_grad`, so
    any later training forward silently passes no gradient through it (LoRA below it stops learning) and computes
    in bf16. Pinning the layer's own mode to "train" keeps the exact, differentiable de-quantise + matmul path.
    Remove when gptqmodel switches back in train mode (tested by tests/models/test_gptq.py and test_awq.py)."""
    count = 0
    for module in model.modules():
        if type(module).__name__ in _SWITCHING_LAYERS and getattr(module, "linear_mode", "train") is None:
            module.linear_mode = "train"
            count += 1
    return count
