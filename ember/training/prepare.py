"""One call from a run config to (tokenizer, renderer, processed samples): used by `ember data` and `ember train`."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ember.config.schema import EmberConfig
from ember.core.heap import frozen_heap
from ember.errors import ConfigError, DataError
from ember.data.cache import load_or_process
from ember.data.pipeline import ProcessedData
from ember.data.render import Renderer
from ember.data.report import NothingToTrain, save_report
from ember.data.setup import build_renderer


@dataclass
class PreparedData:
    tokenizer: object
    renderer: Optional[Renderer]
    data: ProcessedData
    from_cache: bool
    added_tokens: list[int] = field(default_factory=list)  # ids the chat template added to the tokenizer
    stage: Any = None  # the stage that trains this data: the configured one, or its image-text form (with_images)
    processor: Any = None  # an image-text model's processor (holding `tokenizer`), saved with the run


def new_token_warning(prepared: PreparedData, cfg: EmberConfig) -> Optional[str]:
    """What `ember data preview` and `ember train` say when the template brings tokens the model never saw."""
    ids = prepared.added_tokens
    if not ids:
        return None
    names = prepared.tokenizer.convert_ids_to_tokens(ids)
    return (f"data.template={cfg.data.template} uses {len(ids)} special token(s) this tokenizer does not have "
            f"({', '.join(names)}): the model never saw them, so their embeddings start untrained. `ember train` "
            "adds them and trains those rows beside a LoRA adapter (method.modules_to_save: [embed_tokens, lm_head] "
            "trains the whole matrices instead); data.template=auto uses the model's own template, which needs none")


def family_template(cfg: EmberConfig) -> Optional[str]:
    from ember.models.loading import detect_family, load_config

    model_type = getattr(load_config(cfg.model), "model_type", "")
    family = detect_family(model_type, cfg.model.family)
    return family.template if family else None


@frozen_heap()
def prepare_data(cfg: EmberConfig, tokenizer=None, progress: bool = True,
                 report_path: Optional[Path] = None) -> PreparedData:
    """The exact samples of a run (see `ember.prepare_data`). When nothing is left to train, the data report is
    written to `report_path` (if given) before the DataError is raised, so every skipped record stays listed."""
    from ember.models.loading import load_tokenizer

    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg.model)
    from ember.training.stages import STAGES

    stage = STAGES[cfg.stage]
    images = _image_tokens(cfg, tokenizer) if stage.needs_template else None
    if images is not None:
        stage = stage.with_images(images)  # the model family, not the stage name, picks the image path
    renderer = None
    if stage.needs_template:
        fallback = family_template(cfg) if (cfg.data.template == "auto" and not tokenizer.chat_template) else None
        before = len(tokenizer)
        renderer = build_renderer(cfg.data.template, tokenizer, fallback)
        added = list(range(before, len(tokenizer)))
    else:
        added = []
    if renderer is not None:
        renderer.images = images
    try:
        data, cached = load_or_process(cfg.data, stage.recipe, tokenizer, renderer, progress)
    except NothingToTrain as empty:
        if report_path is None:
            raise empty.error from None
        save_report(empty.report, report_path)
        raise DataError(empty.error.source, None, f"{empty.error.problem}; the data report is {report_path}") from None
    return PreparedData(tokenizer, renderer, data, cached, added, stage, images.processor if images else None)


def _image_tokens(cfg: EmberConfig, tokenizer):
    from ember.errors import ConfigError
    from ember.models.vision import image_tokens_for

    images = image_tokens_for(cfg.model, tokenizer)
    if images is None and (cfg.method.train_vision or cfg.method.train_projector):
        raise ConfigError(f"method.train_vision / method.train_projector: {cfg.model.name_or_path} is a text-only model "
                          "(its config has no vision_config); set them to false")
    if images is not None and cfg.data.packing:
        raise ConfigError("data.packing: batches with images are padded, not packed; set data.packing: false")
    return images


def prepare_cache(cfg: EmberConfig) -> tuple[Path, bool, list[str]]:
    """`ember data prepare`: build (or find) the processed-data cache entry this config trains on. Returns (its
    folder, whether it was there already, the report's summary lines)."""
    from ember.data.report import skip_summary

    if not cfg.data.cache:
        raise ConfigError("data.cache is false, so there is no cache to prepare: remove data.cache=false (or use "
                          "`ember data export` to write the samples as JSON lines)")
    prepared = prepare_data(cfg)
    paths = [*prepared.data.train.paths, *prepared.data.eval.paths]
    report = prepared.data.report
    lines = [f"{report.read} records read, {report.train_samples} train / {report.eval_samples} eval samples, "
             f"{report.total_tokens} tokens ({report.trained_tokens} trained)", *skip_summary(report)]
    return paths[0].parent, prepared.from_cache, lines


def export_samples(cfg: EmberConfig, out: Path, report_path: Optional[Path] = None) -> tuple[int, Path, list[str]]:
    """`ember data export`: the samples as JSON lines in `out`, and the data report beside it (`OUT.report.json`, or
    `report_path`) — written also when every record was skipped. The output folder is checked before any work.
    Returns (samples written, report path, the skip summary lines)."""
    from ember.core.paths import check_writable
    from ember.data.preview import export_jsonl
    from ember.data.report import skip_summary

    out = Path(out)
    report_path = Path(report_path) if report_path else out.with_name(out.name + ".report.json")
    check_writable(out)
    check_writable(report_path)
    prepared = prepare_data(cfg, report_path=report_path)
    count = export_jsonl(prepared.data, out)
    save_report(prepared.data.report, report_path)
    return count, report_path, skip_summary(prepared.data.report)
