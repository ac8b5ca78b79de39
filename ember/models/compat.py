"""Version- and hardware-specific workarounds, each with the condition under which it can go.

bitsandbytes (checked with 0.50.2) on CPUs with AVX512-BF16: an eval-mode forward of `Linear4bit` repacks its weight
into an inference-only layout, after which the gradients through the frozen 4-bit weights are silently dropped
(see shared/notes/cpu-stack.md, Q1). We turn that repacking off through the layer's own public attribute.
Remove when bitsandbytes keeps training gradients after packing (tested by tests/training/test_qlora.py).

transformers (checked with 5.24) without torchvision: `Qwen2VLProcessor` / `Qwen2_5_VLProcessor` cannot be built at
all, because every processor argument is type-checked and the video processor's base class is only exported when
torchvision imports (PyPI's torchvision wheels do not load against the CPU build of torch). Images need no video
processor, so `image_only_processor_class` gives a subclass whose constructor takes only the image processor and the
tokenizer (transformers reads a processor's parts from its `__init__` signature) and which saves itself under the
stock class name, so its directory loads with the stock processor wherever torchvision is installed. Remove when
transformers builds these processors without a video processor (tested by tests/vision/test_qwen2_vl.py).
"""

from __future__ import annotations

from typing import Optional

import torch
from transformers import Qwen2_5_VLProcessor, Qwen2VLProcessor
from transformers.utils import is_torchvision_available


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


class _ImageOnly:
    """Mixin for a stock Qwen2-VL-family processor: its constructor takes only the image processor and the tokenizer,
    and `processor_config.json` holds a video processor with the image processor's patch geometry (the stock
    processor refuses to load without one; its other settings are the video processor's defaults)."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template, **kwargs)

    def to_dict(self):
        out = super().to_dict()
        image = out["image_processor"]
        out.setdefault("video_processor", {"video_processor_type": "Qwen2VLVideoProcessor", **{
            key: image[key] for key in ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std")}})
        return out


def _image_only(stock: type) -> type:
    # Named as the stock class: transformers writes a processor's class name into `processor_config.json` and its
    # tokenizer's `tokenizer_config.json`, and a directory saved under the stock name loads with the stock class.
    return type(stock.__name__, (_ImageOnly, stock), {"__module__": __name__, "__doc__": _ImageOnly.__doc__})


ImageOnlyQwen2VLProcessor = _image_only(Qwen2VLProcessor)
ImageOnlyQwen2_5_VLProcessor = _image_only(Qwen2_5_VLProcessor)

_IMAGE_ONLY = {"qwen2_vl": ImageOnlyQwen2VLProcessor, "qwen2_5_vl": ImageOnlyQwen2_5_VLProcessor}


def image_only_processor_class(model_type: str) -> Optional[type]:
    """The image-only stand-in for a model type's processor when its stock processor needs torchvision and
    torchvision is missing; None when the stock processor (AutoProcessor) can be built."""
    if is_torchvision_available():
        return None
    return _IMAGE_ONLY.get(model_type)
