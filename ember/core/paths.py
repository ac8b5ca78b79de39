"""Where Ember keeps what it computes once (converted models, processed data), and how processes share it."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import time
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


# A file this large has its digest remembered (see file_digest); smaller ones hash faster than a memo is read.
REMEMBER_DIGEST_BYTES = 1 << 20
# A file changed less than this long before it was hashed is not remembered: a change within the file system's
# timestamp granularity could leave size and modification time as they were (git's "racily clean" entries).
SETTLED_SECONDS = 2.0


def file_digest(path: Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes. For a large file it is remembered under the cache root, keyed by the file's path,
    device, inode, size and modification time (to the nanosecond), the way `make` and `datasets` tell a local
    file unchanged: a multi-GB dataset or model is read again only after it changes, so a cache hit stays quick."""
    p = Path(path).resolve()
    before = p.stat()
    stamp = [before.st_dev, before.st_ino, before.st_size, before.st_mtime_ns]
    memo = cache_root() / "digests" / f"{hashlib.sha256(str(p).encode('utf-8')).hexdigest()[:32]}.json"
    large = before.st_size >= REMEMBER_DIGEST_BYTES
    if large:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            saved = json.loads(memo.read_text(encoding="utf-8"))
            if saved["path"] == str(p) and saved["stamp"] == stamp:
                return saved["sha256"]
    h = hashlib.sha256()
    with open(p, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    digest = h.hexdigest()
    after = p.stat()
    settled = time.time() - after.st_mtime_ns / 1e9 > SETTLED_SECONDS
    if large and settled and [after.st_dev, after.st_ino, after.st_size, after.st_mtime_ns] == stamp:
        with contextlib.suppress(OSError):  # a memo that cannot be written only costs the next read
            memo.parent.mkdir(parents=True, exist_ok=True)
            partial = memo.with_name(f".{memo.name}.{os.getpid()}")
            partial.write_text(json.dumps({"path": str(p), "stamp": stamp, "sha256": digest}), encoding="utf-8")
            os.replace(partial, memo)
    return digest


def check_writable(path: Path) -> None:
    """Fail now, with a readable message, if `path` cannot be written (read-only or missing folder, no space): long
    work must not end in a traceback at the last step."""
    import errno
    import tempfile

    from ember.errors import ConfigError

    if Path(path).is_dir():
        raise ConfigError(f"cannot write {path}: it is a folder, not a file")
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
