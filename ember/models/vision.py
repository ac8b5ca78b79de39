"""Image-text models: recognise them, load their processor, and name their parts for the tuning method.

A model is image-text when its config has a `vision_config` (LLaVA, Qwen2-VL, ...). It loads through
`AutoModelForImageTextToText` and its processor through `AutoProcessor`, given the run's tokenizer so the ids the
processor makes are the ones the renderer makes. Which modules are the vision tower, the projector and the language
model comes from the family registry (`vision:` in families.yaml).
"""

from __future__ import annotations

from typing import Any, Optional

from ember.config.schema import ModelConfig
from ember.errors import ConfigError
from ember.models.registry import Family, VisionParts


def is_image_text(config: Any) -> bool:
    return getattr(config, "vision_config", None) is not None


def vision_parts(family: Optional[Family], config: Any) -> VisionParts:
    if family is not None and family.vision is not None:
        return family.vision
    raise ConfigError(f"model_type '{getattr(config, 'model_type', '?')}' reads images but Ember does not know where "
                      "its vision tower and language model are: supported image-text families are "
                      + ", ".join(_vision_families()) + " (set model.family if yours is one of them)")


def _vision_families() -> list[str]:
    from ember.models.registry import families

    return [name for name, fam in families().items() if fam.vision is not None]


def load_processor(source: str, tokenizer, revision: Optional[str] = None, trust_remote_code: bool = False,
                   model_type: str = ""):
    """The model's own processor (AutoProcessor) holding `tokenizer`; for Qwen2-VL / Qwen2.5-VL without torchvision,
    the same processor without its video part (`ember.models.compat.image_only_processor_class`)."""
    from transformers import AutoProcessor

    from ember.models.compat import image_only_processor_class

    loader = image_only_processor_class(model_type) or AutoProcessor
    try:
        return loader.from_pretrained(source, tokenizer=tokenizer, revision=revision,
                                      trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{source}: could not load the model's processor ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0] if str(exc) else ''}); an image-text model directory needs its "
                          "processor files (processor_config.json / preprocessor_config.json)") from None


def image_tokens(processor, family: Optional[Family], config: Any):
    """The renderer's view of the processor (`ember.data.vision.ImageTokens`)."""
    from ember.data.vision import ImageTokens

    parts = vision_parts(family, config)
    return ImageTokens(processor, parts.image_text, token_types="mm_token_type_ids" in processor.model_input_names)


def image_tokens_for(cfg: ModelConfig, tokenizer):
    """`ImageTokens` of the run's model, or None for a text-only model (nothing is loaded but its config)."""
    from ember.models.loading import _trust, detect_family, load_config, resolve_source

    config = load_config(cfg)
    if not is_image_text(config):
        return None
    family = detect_family(getattr(config, "model_type", ""), cfg.family)
    if cfg.random_init:
        raise ConfigError("model.random_init builds no processor for an image-text model: start from a model "
                          "directory that has one (docs/multimodal.md shows how to build a small one)")
    source = resolve_source(cfg.name_or_path, cfg.hub, cfg.revision)
    processor = load_processor(source, tokenizer, cfg.revision, _trust(cfg, family), getattr(config, "model_type", ""))
    return image_tokens(processor, family, config)


def _under(name: str, part: str) -> bool:
    """Whether the dotted module/parameter `name` lies under a module whose own name is `part` (dotted allowed)."""
    return f".{part}." in f".{name}."


def part_of(name: str, parts: VisionParts) -> str:
    """'projector', 'tower', 'language' or 'other' (e.g. the lm_head) for a parameter or module name."""
    if _under(name, parts.projector):
        return "projector"
    if _under(name, parts.tower):
        return "tower"
    if _under(name, parts.language_model):
        return "language"
    return "other"


def language_model(model, parts: VisionParts) -> tuple[str, Any]:
    """(name, module) of the language model inside an image-text model."""
    for name, module in model.named_modules():
        if name.split(".")[-1] == parts.language_model.split(".")[-1] and _under(name, parts.language_model):
            return name, module
    raise ConfigError(f"no module named '{parts.language_model}' in {type(model).__name__}")
