"""Where Ember keeps what it computes once (converted models, processed data), and how processes share it."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from pathlib import Path


def cache_root() -> Path:
    root = Path(os.environ.get("EMBER_CACHE", Path.home() / ".cache" / "ember"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@contextlib.contextmanager
def file_lock(path: Path):
    """Serialise a one-time job (GGUF conversion, dataset caching) across processes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def check_writable(path: Path) -> None:
    """Fail now, with a readable message, if `path` cannot be written (read-only or missing folder, no space): long
    work must not end in a traceback at the last step."""
    import errno
    import tempfile

    from ember.errors import ConfigError

    folder = Path(path).parent
    blocker = next((p for p in (folder, *folder.parents) if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise ConfigError(f"cannot write {path}: {blocker} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".ember-write-check-"):
            pass
    except OSError as exc:
        why = "the disk is full" if exc.errno == errno.ENOSPC else exc.strerror or str(exc)
        raise ConfigError(f"cannot write {path}: {why}") from None
