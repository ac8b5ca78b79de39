"""Upload a finished directory (a training run, a checkpoint, an export) to a model hub.

What is uploaded is decided here, from the files on disk: everything but what only resuming needs (optimizer,
scheduler and RNG states, DeepSpeed shards, the pickled TrainingArguments), hidden files and, for a run directory,
its `checkpoint-*` folders. The network call itself is one function per hub in `UPLOADERS` (huggingface_hub's
`HfApi`, modelscope's `HubApi`); the tests replace it with a recorder, so that call is not exercised offline.
"""

from __future__ import annotations

import fnmatch
import glob
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

from ember.errors import EmberError

log = logging.getLogger(__name__)

# Files that only resuming reads (a model repository does not need them; optimizer states double its size).
RESUME_ONLY = ("optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt", "rng_state*.pth", "training_args.bin",
               "global_step*", "latest", "zero_to_fp32.py", "ember_checkpoint.json")
RETRY = {"huggingface": "hf upload {repo} {folder} --exclude 'checkpoint-*' --exclude '*.pt'",
         "modelscope": "modelscope upload {repo} {folder} --exclude 'checkpoint-*' '*.pt'"}


class UploadFailed(EmberError):
    """The hub refused or could not be reached; every file is still on disk and the message says how to retry."""

    exit_code = 4


def upload_files(folder: Path) -> list[str]:
    """The files of `folder` an upload takes, as sorted POSIX paths relative to it."""
    folder = Path(folder)
    out = []
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        parts = path.relative_to(folder).parts
        if any(p.startswith(".") for p in parts) or parts[0].startswith("checkpoint-"):
            continue
        if any(fnmatch.fnmatch(p, pattern) for p in parts for pattern in RESUME_ONLY):
            continue
        out.append(Path(*parts).as_posix())
    return sorted(out)


def _huggingface(repo_id: str, folder: Path, files: Sequence[str], private: bool, message: str) -> None:
    from huggingface_hub import HfApi

    api = HfApi()
    api.create_repo(repo_id, private=private, exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=[glob.escape(f) for f in files],
                      commit_message=message)


def _modelscope(repo_id: str, folder: Path, files: Sequence[str], private: bool, message: str) -> None:
    try:
        from modelscope.hub.api import HubApi
    except ImportError:
        raise UploadFailed("output.hub / --hub modelscope needs the modelscope package: "
                           "pip install 'ember[modelscope]'") from None
    api = HubApi()
    api.create_repo(repo_id, visibility="private" if private else "public", exist_ok=True)
    api.upload_folder(repo_id=repo_id, folder_path=str(folder), allow_patterns=[glob.escape(f) for f in files],
                      commit_message=message)


# One upload function per hub: (repo id, folder, files relative to it, private, commit message).
UPLOADERS: dict[str, Callable[[str, Path, Sequence[str], bool, str], None]] = {
    "huggingface": _huggingface, "modelscope": _modelscope}


def push_folder(folder: Path, repo_id: str, hub: str = "huggingface", private: bool = False,
                message: str = "Upload with Ember") -> list[str]:
    """Upload `upload_files(folder)` to `repo_id` on `hub` (the repository is created if it does not exist, private
    when `private`). Returns the files uploaded.

    Raises:
        UploadFailed: the hub is unknown, refused the upload or could not be reached (nothing on disk changes).
    """
    if hub not in UPLOADERS:
        raise UploadFailed(f"hub '{hub}' is not one of {', '.join(UPLOADERS)}")
    folder = Path(folder)
    files = upload_files(folder)
    if not files:
        raise UploadFailed(f"{folder} holds nothing to upload")
    log.info("uploading %d files of %s to %s:%s", len(files), folder, hub, repo_id)
    try:
        UPLOADERS[hub](repo_id, folder, files, private, message)
    except UploadFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - network, authentication and hub errors all end the same way
        retry = RETRY[hub].format(repo=repo_id, folder=folder)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UploadFailed(f"upload of {folder} to {hub}:{repo_id} failed ({type(exc).__name__}: {first}); every file "
                           f"is still in {folder}: log in (hf auth login / modelscope login) and retry with "
                           f"`{retry}`") from exc
    return files
