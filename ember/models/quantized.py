"""Pre-quantized bases: checkpoints whose config.json carries a `quantization_config` (GPTQ, AWQ; int4/int8).

transformers reads that config in `from_pretrained` and builds the quantized layers itself (GPTQ through optimum +
gptqmodel, AWQ through gptqmodel); Ember never quantizes such a base again. LoRA trains on top of the frozen
quantized weights, prepared like a QLoRA base (`prepare_model_for_kbit_training`). peft's "all-linear" matches only
`nn.Linear`, so for these bases the targets are the quantized layers' names. Export folds the adapter into a
de-quantised base: each quantized linear becomes an `nn.Linear` holding the weight its kernel computes with
(`dequantize_weight` for GPTQ, `awq_weight_dequantize` for AWQ).
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from ember.errors import ConfigError

# quant_method values whose checkpoints hold quantized weights that LoRA trains on (transformers' names)
PREQUANTIZED = ("gptq", "awq")


def checkpoint_quantization(config: Any) -> Optional[str]:
    """The `quant_method` a checkpoint's config.json names ("gptq", "awq", ...), or None for a plain checkpoint."""
    q = getattr(config, "quantization_config", None)
    if q is None:
        return None
    method = q.get("quant_method") if isinstance(q, dict) else getattr(q, "quant_method", None)
    return str(getattr(method, "value", method)) if method is not None else None


def is_prequantized(model) -> bool:
    """A model loaded from a GPTQ/AWQ checkpoint (not a bitsandbytes model Ember quantized while loading)."""
    return checkpoint_quantization(getattr(model, "config", None)) in PREQUANTIZED


def check_loadable(config: Any, source: str, requantize: bool) -> None:
    """Fail early, with the fix, when a quantized checkpoint would be quantized again or its libraries are missing."""
    import importlib.util

    method = checkpoint_quantization(config)
    if method is None:
        return
    if requantize:
        raise ConfigError(
            f"{source} is already quantized ({method}, from its config.json); method.type=qlora would quantize it "
            "again: use method.type=lora (LoRA trains on the quantized weights as they are) and drop method.bits")
    if method in PREQUANTIZED:
        missing = [name for name in ("optimum", "gptqmodel") if importlib.util.find_spec(name) is None]
        if method == "awq" and "optimum" in missing:
            missing.remove("optimum")  # transformers' AWQ path needs gptqmodel only
        if missing:
            raise ConfigError(
                f"{source} is a {method} checkpoint; loading it needs {' and '.join(missing)}: "
                "pip install 'ember[gptq]'")


def quantized_linears(model) -> dict[str, torch.nn.Module]:
    """Every quantized linear layer of a GPTQ/AWQ model, by full module name."""
    from peft.utils.other import is_gptqmodel_quant_linear

    return {name: m for name, m in model.named_modules() if is_gptqmodel_quant_linear(m)}


def linear_targets(model) -> list[str]:
    """LoRA targets for "all-linear" on a quantized base: the short names of its quantized layers (q_proj, ...)."""
    names = sorted({name.rsplit(".", 1)[-1] for name in quantized_linears(model)})
    if not names:
        raise ConfigError("the model's config.json says it is quantized, but no quantized linear layer was found")
    return names


def dequantize(model) -> int:
    """Replace each quantized linear by an `nn.Linear` with the weight its kernel uses, then drop the quantization
    config, so the model saves and merges as a plain one. Returns the number of layers replaced."""
    layers = quantized_linears(model)
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    for name, layer in layers.items():
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        weight = _dequantized(layer, name, dtype).T.contiguous()  # gptqmodel keeps it (in_features, out_features)
        bias = getattr(layer, "bias", None)
        dense = torch.nn.Linear(layer.in_features, layer.out_features, bias=bias is not None,
                                device=weight.device, dtype=dtype)
        with torch.no_grad():
            dense.weight.copy_(weight.to(dtype))
            if bias is not None:
                dense.bias.copy_(bias.to(dtype))
        dense.requires_grad_(False)
        setattr(parent, child, dense)
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    return len(layers)


def _dequantized(layer: torch.nn.Module, name: str, dtype: torch.dtype) -> torch.Tensor:
    """The (in_features, out_features) weight a gptqmodel layer computes with when it trains: GPTQ layers'
    `dequantize_weight`, AWQ ones' `awq_weight_dequantize` (the very call their training forward makes)."""
    if hasattr(layer, "awq_weight_dequantize"):
        return layer.awq_weight_dequantize(device=layer.qweight.device, dtype=dtype)
    if hasattr(layer, "dequantize_weight"):
        return layer.dequantize_weight()
    raise ConfigError(f"{name}: gptqmodel's {type(layer).__name__} kernel has no de-quantise method, so the merged "
                      "export cannot be written from it; export where gptqmodel picks its CPU kernels, which have "
                      "one (e.g. CUDA_VISIBLE_DEVICES= ember export ...)")
