"""What a run leaves beside its weights so chat / serve / eval / export reload exactly what was trained."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

RUN_CONFIG = "ember_run.yaml"
TEMPLATE_INFO = "ember_template.json"
DATA_REPORT = "data_report.json"
METRICS = "metrics.json"  # the final metrics of `ember train` (train_loss, eval_loss, ...)
TRAINER_STATE = "trainer_state.json"  # transformers' log history of the run
# `ember eval ... --out DIR` writes DIR/scores.json: flat metric name -> number, plus these non-numeric sections.
EVAL_SCORES = "scores.json"
EVAL_SECTIONS = ("meta", "subjects", "categories", "table")


def write_metadata(directory: Path, config_yaml: str, template: Optional[dict[str, Any]], tokenizer=None) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / RUN_CONFIG).write_text(config_yaml, encoding="utf-8")
    if template is not None:
        (directory / TEMPLATE_INFO).write_text(json.dumps(template, indent=2, ensure_ascii=False), encoding="utf-8")
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)


def read_template_info(directory: Path) -> Optional[dict[str, Any]]:
    path = Path(directory) / TEMPLATE_INFO
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
