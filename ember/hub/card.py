"""The model card (README.md) written into every directory Ember uploads: Hugging Face card metadata (YAML front
matter) and what a reader needs to trust the model: base, data and its counts, the exact config, the losses, and
the evaluation results that `ember eval --out` left in the run directory.

Everything comes from the files a run leaves (`ember_run.yaml`, `data_report.json`, `metrics.json`,
`trainer_state.json`, `scores.json`): the card of a run is the same whether it is written at the end of training or
later by `ember export`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml

from ember.core.artifacts import DATA_REPORT, EVAL_SCORES, EVAL_SECTIONS, METRICS, RUN_CONFIG, TRAINER_STATE

CARD = "README.md"


@dataclass
class CardFacts:
    """What the card says, gathered from a run directory (every field may be missing)."""

    title: str
    base_model: Optional[str] = None  # a hub id for the metadata (None: a local directory or file)
    base_source: Optional[str] = None  # model.name_or_path as configured
    library: str = "transformers"  # peft for an adapter
    license: Optional[str] = None
    config_yaml: Optional[str] = None
    config: dict[str, Any] = field(default_factory=dict)
    data_report: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    log_history: list[dict[str, Any]] = field(default_factory=list)
    evals: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # (path relative to the run, scores)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        return None


def eval_results(run_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """`scores.json` files in `run_dir` and in its folders two levels down (`RUN/eval/cmmlu/scores.json`), not in
    checkpoints or hidden folders; sorted by path."""
    run_dir = Path(run_dir)
    found = []
    for pattern in (EVAL_SCORES, f"*/{EVAL_SCORES}", f"*/*/{EVAL_SCORES}"):
        for path in run_dir.glob(pattern):
            parts = path.relative_to(run_dir).parts[:-1]
            if any(p.startswith((".", "checkpoint-")) for p in parts):
                continue
            scores = _json(path)
            if isinstance(scores, dict):
                found.append((Path(*parts).as_posix() if parts else ".", scores))
    return sorted(found, key=lambda item: item[0])


def gather(folder: Path, title: str, base_model: Optional[str] = None, library: str = "transformers",
           license: Optional[str] = None, fallback: Optional[Path] = None) -> CardFacts:
    """Read what `folder` holds (an Ember output dir, a checkpoint, an adapter or exported folder); a file it
    lacks is read from `fallback` (the run directory of a checkpoint or export), and so are the evaluations."""
    dirs = [Path(folder), *([Path(fallback)] if fallback is not None else [])]

    def find(name: str) -> Path:
        return next((d / name for d in dirs if (d / name).is_file()), dirs[0] / name)

    config_path = find(RUN_CONFIG)
    config_yaml = config_path.read_text(encoding="utf-8") if config_path.is_file() else None
    config = (yaml.safe_load(config_yaml) or {}) if config_yaml else {}
    state = _json(find(TRAINER_STATE)) or {}
    return CardFacts(
        title=title, base_model=base_model, base_source=(config.get("model") or {}).get("name_or_path"),
        library=library, license=license, config_yaml=config_yaml, config=config,
        data_report=_json(find(DATA_REPORT)) or {}, metrics=_json(find(METRICS)) or {},
        log_history=list(state.get("log_history") or []), evals=eval_results(dirs[-1]))


def _hub_datasets(config: dict[str, Any]) -> list[str]:
    """Dataset entries that are hub ids (ORG/NAME, no such local path): what the card metadata may link to."""
    out = []
    for spec in (config.get("data") or {}).get("datasets") or []:
        path = str(spec.get("path", ""))
        if path.count("/") == 1 and not Path(path).suffix and not Path(path).exists() and \
                not path.startswith((".", "/", "~")):
            out.append(path)
    return out


def _number(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return str(value) if isinstance(value, int) else f"{value:.4f}"


def _last(history: list[dict[str, Any]], key: str) -> Optional[dict[str, Any]]:
    return next((entry for entry in reversed(history) if key in entry), None)


def _front_matter(facts: CardFacts) -> list[str]:
    config = facts.config
    meta: dict[str, Any] = {}
    if facts.base_model:
        meta["base_model"] = facts.base_model
    meta["library_name"] = facts.library
    if facts.license:
        meta["license"] = facts.license
    datasets = _hub_datasets(config)
    if datasets:
        meta["datasets"] = datasets
    meta["pipeline_tag"] = "text-generation"
    method = (config.get("method") or {}).get("type")
    meta["tags"] = ["ember", *(t for t in (config.get("stage"), method) if t)]
    return ["---", yaml.safe_dump(meta, sort_keys=False, allow_unicode=True).rstrip("\n"), "---", ""]


def _data_section(facts: CardFacts) -> list[str]:
    specs = (facts.config.get("data") or {}).get("datasets") or []
    if not specs and not facts.data_report:
        return []
    lines = ["## Data", ""]
    if specs:
        lines += ["| dataset | format | split | samples |", "|---|---|---|---|"]
        for spec in specs:
            amount = spec.get("samples") if spec.get("samples") is not None else (
                f"ratio {spec['ratio']}" if spec.get("ratio") is not None else "all")
            lines.append(f"| `{spec.get('path')}` | {spec.get('format', 'auto')} | {spec.get('split', 'train')} | "
                         f"{amount} |")
        lines.append("")
    report = facts.data_report
    counts = [("records read", "read"), ("train samples", "train_samples"), ("eval samples", "eval_samples"),
              ("trained tokens", "trained_tokens"), ("truncated", "truncated"),
              ("skipped records", None), ("dropped (too long)", "dropped_too_long")]
    if report:
        lines += ["From the run's data report (`data_report.json`):", "", "| count | value |", "|---|---:|"]
        for label, key in counts:
            value = sum((report.get("skipped") or {}).values()) if key is None else report.get(key)
            if value is not None:
                lines.append(f"| {label} | {value} |")
        lines.append("")
    return lines


def _training_section(facts: CardFacts) -> list[str]:
    rows = []
    train = _last(facts.log_history, "loss")
    if train is not None:
        rows.append((f"final train loss (step {train.get('step')})", _number(train["loss"])))
    evaluation = _last(facts.log_history, "eval_loss")
    if evaluation is not None:
        rows.append((f"final eval loss (step {evaluation.get('step')})", _number(evaluation["eval_loss"])))
    for key, label in (("train_loss", "mean train loss over the run"), ("eval_loss", "eval loss at the end"),
                       ("train_runtime", "train runtime (s)")):
        if key in facts.metrics:
            rows.append((label, _number(facts.metrics[key])))
    if not rows:
        return []
    return ["## Training results", "", "| metric | value |", "|---|---:|",
            *(f"| {label} | {value} |" for label, value in rows), ""]


def _eval_section(facts: CardFacts) -> list[str]:
    if not facts.evals:
        return []
    lines = ["## Evaluation", "", "Scores written by `ember eval` into the run directory (0-100 scale).", ""]
    for where, scores in facts.evals:
        meta = scores.get("meta") or {}
        what = ", ".join(f"{k}: {meta[k]}" for k in ("kind", "label", "tasks") if meta.get(k))
        lines += [f"`{where}/{EVAL_SCORES}`" + (f" ({what})" if what else ""), "", "| metric | value |", "|---|---:|"]
        lines += [f"| {name} | {_number(value)} |" for name, value in scores.items()
                  if name not in EVAL_SECTIONS and isinstance(value, (int, float)) and not isinstance(value, bool)]
        lines.append("")
    return lines


def render_card(facts: CardFacts) -> str:
    """The README.md text."""
    config = facts.config
    stage, method = config.get("stage"), (config.get("method") or {}).get("type")
    lines = [*_front_matter(facts), f"# {facts.title}", ""]
    how = " ".join(t for t in (f"`{stage}`" if stage else "", f"({method})" if method else "") if t)
    if facts.base_source:
        revision = (config.get("model") or {}).get("revision")
        lines += [f"Fine-tuned {how + ' ' if how else ''}with Ember from `{facts.base_source}`"
                  + (f" (revision `{revision}`)" if revision else "")
                  + (f", the hub model `{facts.base_model}`." if facts.base_model and facts.base_model !=
                     facts.base_source else "."), ""]
    if facts.library == "peft":
        lines += ["This repository holds a LoRA adapter: load it on top of the base model (peft), or merge it with "
                  "`ember export`.", ""]
    lines += _data_section(facts) + _training_section(facts) + _eval_section(facts)
    if facts.config_yaml:
        lines += ["## Configuration", "", "The exact configuration of the run (`ember_run.yaml`):", "", "```yaml",
                  facts.config_yaml.rstrip("\n"), "```", ""]
    return "\n".join(lines)


def write_card(folder: Path, facts: CardFacts) -> Path:
    """Write README.md into `folder` (an existing README.md, such as peft's template, is replaced: the card describes
    this folder). A new file, never a write into the old one: that may be a hard link into a sealed checkpoint."""
    path = Path(folder) / CARD
    path.unlink(missing_ok=True)
    path.write_text(render_card(facts), encoding="utf-8")
    return path


def base_license(base_dir: Optional[str]) -> Optional[str]:
    """The `license:` of the base model's own card, when its local directory has one."""
    if not base_dir:
        return None
    card = Path(base_dir) / CARD
    if not card.is_file():
        return None
    text = card.read_text(encoding="utf-8", errors="replace")
    if not text.startswith("---"):
        return None
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except (yaml.YAMLError, IndexError):
        return None
    value = meta.get("license") if isinstance(meta, dict) else None
    return str(value) if value else None
