"""One call from a run config to (tokenizer, renderer, processed samples): used by `ember data` and `ember train`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ember.config.schema import EmberConfig
from ember.data.cache import load_or_process
from ember.data.pipeline import ProcessedData
from ember.data.render import Renderer
from ember.data.setup import build_renderer


@dataclass
class PreparedData:
    tokenizer: object
    renderer: Optional[Renderer]
    data: ProcessedData
    from_cache: bool


def family_template(cfg: EmberConfig) -> Optional[str]:
    from ember.models.loading import detect_family, load_config

    model_type = getattr(load_config(cfg.model), "model_type", "")
    family = detect_family(model_type, cfg.model.family)
    return family.template if family else None


def prepare_data(cfg: EmberConfig, tokenizer=None, progress: bool = True) -> PreparedData:
    from ember.models.loading import load_tokenizer

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    from ember.training.stages import STAGES

    stage = STAGES[cfg.stage]
    renderer = None
    if stage.needs_template:
        fallback = family_template(cfg) if (cfg.data.template == "auto" and not tokenizer.chat_template) else None
        renderer = build_renderer(cfg.data.template, tokenizer, fallback)
    data, cached = load_or_process(cfg.data, stage.recipe, tokenizer, renderer, progress)
    return PreparedData(tokenizer, renderer, data, cached)
