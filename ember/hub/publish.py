"""Card + upload in one call, as `ember train` (output.push_to_hub) and `ember export --push-to-hub` use it."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

from ember.hub.card import base_license, gather, write_card
from ember.hub.upload import push_folder, upload_files

# ModelScope lists a model by this file (its task and framework); Hugging Face ignores it.
MODELSCOPE_CONFIG = "configuration.json"


def publish(folder: Path, repo_id: str, hub: str = "huggingface", private: bool = False, *,
            run_dir: Optional[Path] = None, base_model: Optional[str] = None, base_dir: Optional[str] = None,
            message: str = "Upload with Ember") -> list[str]:
    """Write the model card (README.md) into `folder`, then upload it. The card's facts come from `folder` and,
    for files it lacks (the run's config, data report, evaluations), from `run_dir`. Returns the files uploaded.

    Raises:
        UploadFailed: the upload did not happen (every file stays on disk).
    """
    folder = Path(folder)
    library = "peft" if (folder / "adapter_config.json").is_file() else "transformers"
    facts = gather(folder, title=repo_id, base_model=base_model, library=library, license=base_license(base_dir),
                   fallback=run_dir)
    write_card(folder, facts)
    if hub == "modelscope" and not (folder / MODELSCOPE_CONFIG).is_file():
        (folder / MODELSCOPE_CONFIG).write_text(json.dumps({"framework": "pytorch", "task": "text-generation"}),
                                                encoding="utf-8")
    return push_folder(folder, repo_id, hub, private, message)


def publish_checkpoint(checkpoint: Path, repo_id: str, hub: str = "huggingface", private: bool = False, *,
                       run_dir: Path, base_model: Optional[str] = None, base_dir: Optional[str] = None) -> list[str]:
    """Upload a sealed checkpoint's model files without touching it: they are hard-linked (copied where links are
    not possible) into a hidden folder beside it, which gets the card and is removed afterwards."""
    checkpoint = Path(checkpoint)
    view = run_dir / ".ember-upload" / checkpoint.name
    shutil.rmtree(view, ignore_errors=True)
    try:
        for name in upload_files(checkpoint):
            target = view / name
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(checkpoint / name, target)
            except OSError:
                shutil.copy2(checkpoint / name, target)
        return publish(view, repo_id, hub, private, run_dir=run_dir, base_model=base_model, base_dir=base_dir,
                       message=f"Upload {checkpoint.name} with Ember")
    finally:
        shutil.rmtree(view, ignore_errors=True)
        try:
            view.parent.rmdir()
        except OSError:  # not empty or already gone
            pass
