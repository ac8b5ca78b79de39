"""File digests: exact, and remembered for large files only while the file provably has not changed."""

from __future__ import annotations

import hashlib
import os
import time

import pytest

from ember.core import paths


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(paths, "REMEMBER_DIGEST_BYTES", 16)
    return tmp_path / "cache" / "digests"


def settle(path, seconds_ago: float = 60.0) -> None:
    """Give the file a modification time far enough in the past for its digest to be remembered."""
    past = time.time_ns() - int(seconds_ago * 1e9)
    os.utime(path, ns=(past, past))


def reads(monkeypatch) -> list:
    """A spy on the files file_digest opens (our own module's `open`)."""
    opened = []
    real = open
    monkeypatch.setattr(paths, "open", lambda p, *a, **k: opened.append(p) or real(p, *a, **k), raising=False)
    return opened


def test_a_settled_large_file_is_read_once_and_its_digest_stays_exact(tmp_path, cache, monkeypatch):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"x" * 100)
    settle(data)
    opened = reads(monkeypatch)
    assert paths.file_digest(data) == hashlib.sha256(b"x" * 100).hexdigest()
    assert paths.file_digest(data) == hashlib.sha256(b"x" * 100).hexdigest()
    assert len(opened) == 1 and len(list(cache.iterdir())) == 1


@pytest.mark.parametrize("change", ["content and time", "size"])
def test_a_changed_file_is_read_again(tmp_path, cache, monkeypatch, change):
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"x" * 100)
    settle(data)
    paths.file_digest(data)
    stat = data.stat()
    new = b"y" * 100 if change == "content and time" else b"x" * 101
    data.write_bytes(new)
    if change == "size":  # the same modification time as before: the size alone tells
        os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert paths.file_digest(data) == hashlib.sha256(new).hexdigest()


def test_a_file_changed_just_now_is_not_remembered(tmp_path, cache, monkeypatch):
    # Rewritten within the clock's granularity, a same-size file could keep its modification time: a digest taken
    # this close to the last change is used once and forgotten.
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"x" * 100)
    assert paths.file_digest(data) == hashlib.sha256(b"x" * 100).hexdigest()
    assert not cache.exists() or not list(cache.iterdir())
    stat = data.stat()
    data.write_bytes(b"z" * 100)
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same time: only a re-read can tell
    assert paths.file_digest(data) == hashlib.sha256(b"z" * 100).hexdigest()


def test_small_files_are_hashed_every_time(tmp_path, cache, monkeypatch):
    monkeypatch.setattr(paths, "REMEMBER_DIGEST_BYTES", 1 << 20)
    data = tmp_path / "small.json"
    data.write_bytes(b"{}")
    settle(data)
    opened = reads(monkeypatch)
    paths.file_digest(data), paths.file_digest(data)
    assert len(opened) == 2 and not cache.exists()
