"""Checkpoints that are either complete or absent: staged, listed in a manifest, then renamed into place.

A save writes `OUTPUT/.ember-staging/checkpoint-N/`, lists every file and its size in `ember_checkpoint.json`
(written last, after every file is flushed to disk), and only then renames the folder to `OUTPUT/checkpoint-N`. A
kill or a full disk at any moment leaves either the previous checkpoints untouched or the new one complete. Rotation
runs after that rename and moves an old checkpoint out of the way (a rename) before deleting its files, so a
`checkpoint-*` folder is never half deleted either.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

MANIFEST = "ember_checkpoint.json"
STAGING = ".ember-staging"  # hidden, and not `checkpoint-*`: nothing that lists checkpoints ever sees it
TRAINER_STATE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


@dataclass
class Scan:
    complete: list[Path] = field(default_factory=list)  # oldest step first
    partial: list[tuple[Path, str]] = field(default_factory=list)  # (folder, why it cannot be resumed from)

    @property
    def newest(self) -> Optional[Path]:
        return self.complete[-1] if self.complete else None

    def describe_partial(self) -> str:
        return "; ".join(f"{path.name} ({why})" for path, why in self.partial)


def step_of(path: Path) -> Optional[int]:
    match = _NAME.match(path.name)
    return int(match.group(1)) if match else None


def problem(folder: Path) -> Optional[str]:
    """None when `folder` is a complete checkpoint, else why it is not."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return _legacy_problem(folder)
    try:
        listed = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{MANIFEST} is unreadable"
    for name, size in listed.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {size}"
    return None


def _legacy_problem(folder: Path) -> Optional[str]:
    """A checkpoint written before manifests existed counts as complete when its trainer state (which transformers
    writes after the weights, optimizer and RNG states) is there and readable."""
    try:
        state = json.loads((folder / TRAINER_STATE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {MANIFEST} and no {TRAINER_STATE}: the save did not finish"
    except (OSError, ValueError):
        return f"no {MANIFEST} and {TRAINER_STATE} is unreadable"
    if step_of(folder) is not None and state.get("global_step") != step_of(folder):
        return f"no {MANIFEST} and {TRAINER_STATE} is for step {state.get('global_step')}"
    return None


def scan(output_dir: Path) -> Scan:
    """Complete and partial checkpoints in `output_dir`, including saves that never reached their rename."""
    result = Scan()
    if not output_dir.is_dir():
        return result
    folders = sorted((p for p in output_dir.iterdir() if p.is_dir() and step_of(p) is not None), key=step_of)
    for folder in folders:
        why = problem(folder)
        if why is None:
            result.complete.append(folder)
        else:
            result.partial.append((folder, why))
    staging = output_dir / STAGING
    if staging.is_dir():  # (`deleting-*` there are old checkpoints that rotation was removing: nothing to report)
        result.partial += [(p, "an interrupted save, never renamed into place") for p in sorted(staging.iterdir())
                           if step_of(p) is not None]
    return result


def clear_staging(output_dir: Path) -> None:
    """Remove what interrupted saves and deletions left behind (call before training starts)."""
    shutil.rmtree(output_dir / STAGING, ignore_errors=True)


def staging_root(output_dir: Path) -> Path:
    return output_dir / STAGING


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_manifest(folder: Path, step: int) -> None:
    """Flush every file of `folder` to disk, then record names and sizes; the manifest is the last file written."""
    files = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        _fsync(path)
        files[path.relative_to(folder).as_posix()] = path.stat().st_size
    manifest = folder / MANIFEST
    manifest.write_text(json.dumps({"step": step, "files": files}, indent=1), encoding="utf-8")
    _fsync(manifest)
    _fsync(folder)


def publish(staged: Path, final: Path) -> None:
    """Rename a complete staged checkpoint into place (a leftover partial folder of that name is removed first)."""
    if final.exists():
        _discard(final)
    os.replace(staged, final)
    _fsync(final.parent)


def _discard(folder: Path) -> None:
    """Delete a checkpoint folder so that no half-deleted `checkpoint-*` can remain: rename it away, then delete."""
    trash = folder.parent / STAGING / f"deleting-{folder.name}"
    trash.parent.mkdir(exist_ok=True)
    shutil.rmtree(trash, ignore_errors=True)
    os.replace(folder, trash)
    shutil.rmtree(trash, ignore_errors=True)


def rotate(output_dir: Path, limit: Optional[int], keep: Optional[Path] = None) -> list[Path]:
    """Delete the oldest complete checkpoints beyond `limit`; never the newest one, `keep`, or a partial folder."""
    if not limit or limit < 1:
        return []
    complete = scan(output_dir).complete
    protected = {complete[-1].name} if complete else set()
    if keep is not None:
        protected.add(Path(keep).name)
    removed = []
    excess = len(complete) - max(limit, len(protected))
    for folder in complete:
        if excess <= 0:
            break
        if folder.name not in protected:
            _discard(folder)
            removed.append(folder)
            excess -= 1
    return removed
