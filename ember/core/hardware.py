"""Which floating-point formats this machine runs well."""

from __future__ import annotations

import functools

import torch


@functools.lru_cache(maxsize=1)
def bf16_supported() -> bool:
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    # On CPU, bf16 autocast is only worth it (and only exact enough) with native AVX512-BF16 / AMX instructions.
    try:
        flags = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_dtype(name: str) -> torch.dtype:
    """`auto` → bf16 where supported, else fp32. Weights stay fp32 on CPU: bf16 there is used via autocast."""
    if name == "auto":
        return torch.bfloat16 if (torch.cuda.is_available() and bf16_supported()) else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]
