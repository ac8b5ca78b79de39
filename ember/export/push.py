"""`ember export --push-to-hub REPO`: the exported directory goes to a hub with a model card built from the run it
came from (config, data report, losses, evaluations)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Optional

import yaml

from ember.config.loader import from_dict
from ember.config.schema import ModelConfig
from ember.core.artifacts import RUN_CONFIG
from ember.errors import ConfigError
from ember.hub.publish import publish
from ember.models.loading import hub_model_id


def check_push(repo: str, hub: str, fmt: str) -> None:
    """Before the (slow) merge: a repository id, a hub whose package is here, a directory to upload."""
    if repo.count("/") != 1 or repo.startswith("/") or repo.endswith("/") or " " in repo:
        raise ConfigError(f"--push-to-hub {repo!r} is not a repository id: write ORG/NAME (e.g. alice/my-model)")
    if fmt != "hf":
        raise ConfigError("--push-to-hub uploads an exported directory: use --format hf, or upload the GGUF file "
                          f"itself (hf upload {repo} FILE.gguf)")
    if hub == "modelscope" and importlib.util.find_spec("modelscope") is None:
        raise ConfigError("--hub modelscope needs the modelscope package: pip install 'ember[modelscope]'")


def _run_dir(model: str, adapter: Optional[str]) -> Optional[Path]:
    """The Ember run the export came from: the adapter's folder, else --model when it is a run directory."""
    for candidate in (adapter, model):
        if candidate and (Path(candidate) / RUN_CONFIG).is_file():
            return Path(candidate)
    return None


def _base_config(model: str, adapter: Optional[str], run: Optional[Path]) -> ModelConfig:
    if run is not None and not (adapter is None and (run / "config.json").is_file()):
        raw = yaml.safe_load((run / RUN_CONFIG).read_text(encoding="utf-8")) or {}
        return from_dict(ModelConfig, raw.get("model", {}), where=str(run / RUN_CONFIG))
    return ModelConfig(name_or_path=model)  # an adapter's base, or a full model exported as it is


def push_export(target: Path, model: str, adapter: Optional[str], repo: str, hub: str = "huggingface",
                private: bool = False) -> list[str]:
    """Write the card into `target` and upload it; returns the files uploaded.

    Raises:
        UploadFailed: the upload did not happen (the exported directory stays as written).
    """
    run = _run_dir(model, adapter)
    base = _base_config(model, adapter, run)
    local = Path(base.name_or_path).expanduser()
    return publish(target, repo, hub, private, run_dir=run,
                   base_model=None if base.random_init else hub_model_id(base),
                   base_dir=str(local) if local.is_dir() else None, message="Upload an export with Ember")
