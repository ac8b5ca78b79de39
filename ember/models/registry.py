"""Model families and named models, read from `families.yaml` and `models.yaml` (data, not code branches)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ember.errors import ConfigError

HERE = Path(__file__).parent


@dataclass(frozen=True)
class VisionParts:
    """Where an image-text model keeps its parts (module names, matched as whole dotted components) and how its
    chat text marks an image."""

    tower: str  # the vision encoder
    projector: str  # what maps its features into the language model (may sit inside the tower)
    language_model: str  # the decoder that LoRA adapts by default
    image_text: str  # the text one image stands as in a rendered chat, before the processor expands it


@dataclass(frozen=True)
class Family:
    name: str
    model_types: tuple[str, ...]
    native: bool
    template: str
    lora_targets: tuple[str, ...]
    trust_remote_code: bool = False
    members: tuple[str, ...] = ()
    quirks: dict[str, Any] = field(default_factory=dict)
    vision: Optional[VisionParts] = None  # set for image-text families


@functools.lru_cache(maxsize=1)
def families() -> dict[str, Family]:
    raw = yaml.safe_load((HERE / "families.yaml").read_text(encoding="utf-8"))
    return {
        name: Family(
            name=name,
            model_types=tuple(spec["model_types"]),
            native=bool(spec["native"]),
            template=spec["template"],
            lora_targets=tuple(spec["lora_targets"]),
            trust_remote_code=bool(spec.get("trust_remote_code", False)),
            members=tuple(spec.get("members", ())),
            quirks=dict(spec.get("quirks") or {}),
            vision=VisionParts(**spec["vision"]) if spec.get("vision") else None,
        )
        for name, spec in raw.items()
    }


def family_for(model_type: str, override: Optional[str] = None) -> Optional[Family]:
    table = families()
    if override:
        if override not in table:
            raise ConfigError(f"model.family '{override}' is unknown; known: {', '.join(table)}")
        return table[override]
    for fam in table.values():
        if model_type in fam.model_types:
            return fam
    return None


@dataclass(frozen=True)
class NamedModel:
    """A short name users type (`smollm2-135m-instruct`) and where its weights come from."""

    name: str
    package: Optional[str] = None  # a Python package that ships the file (found without importing it)
    file: Optional[str] = None
    hub_id: Optional[str] = None


@functools.lru_cache(maxsize=1)
def named_models() -> dict[str, NamedModel]:
    raw = yaml.safe_load((HERE / "models.yaml").read_text(encoding="utf-8"))
    return {name: NamedModel(name=name, **spec) for name, spec in raw.items()}
