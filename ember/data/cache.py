"""Cache processed samples under a key made of everything that can change them.

The key covers: each input file's content hash, the tokenizer (vocab, special tokens, chat template), the template
source, the stage's recipe and every data option. An entry is a folder of Arrow files plus the data report, written
under a temporary name and renamed into place when complete, so a crash never leaves a half entry; a hit maps the
files (well under a second, whatever their size). With the cache off, the samples live in a temporary folder that
goes away with them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from ember.config.loader import to_dict
from ember.config.schema import DataConfig
from ember.core.paths import cache_root, check_writable, file_digest, file_lock
from ember.data.pipeline import ProcessedData, process
from ember.data.recipes import Recipe
from ember.data.render import Renderer, tokenizer_identity
from ember.data.report import DataReport
from ember.errors import ConfigError

log = logging.getLogger(__name__)
CACHE_VERSION = "3"  # bump when the processing code changes what it produces (3: nulls absent, record accounting)
_REPORT = "report.json"
_FILES = "files.json"


def _input_digest(path: str) -> str:
    p = Path(path)
    if p.is_file():
        return file_digest(p)
    if p.is_dir():
        h = hashlib.sha256()
        for f in sorted(x for x in p.rglob("*") if x.is_file()):
            h.update(str(f.relative_to(p)).encode())
            h.update(file_digest(f).encode())
        return h.hexdigest()
    return f"hub:{path}"  # hub datasets carry their own revision cache


def cache_key(data: DataConfig, recipe: Recipe, tokenizer, renderer: Optional[Renderer]) -> str:
    options = to_dict(data)
    for key in ("cache", "cache_dir", "num_proc"):  # where and how fast, not what
        options.pop(key, None)
    payload = {
        "version": CACHE_VERSION,
        "recipe": recipe.name,
        "options": options,
        "inputs": [_input_digest(s.path) for s in data.datasets],
        "tokenizer": tokenizer_identity(tokenizer),
        "template": renderer.identity if renderer else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:24]


def cache_dir(data: DataConfig) -> Path:
    return Path(data.cache_dir) if data.cache_dir else cache_root() / "data"


def load_or_process(data: DataConfig, recipe: Recipe, tokenizer, renderer: Optional[Renderer],
                    progress: bool = True) -> tuple[ProcessedData, bool]:
    """Return (data, from_cache)."""
    if not data.cache:
        work = tempfile.TemporaryDirectory(prefix="ember-data-")
        result = process(data, recipe, tokenizer, renderer, Path(work.name), progress)
        result.train._keep = result.eval._keep = work  # the folder lives as long as the samples
        return result, False
    root = cache_dir(data)
    key = cache_key(data, recipe, tokenizer, renderer)
    entry = root / key
    lock = root / f"{key}.lock"
    try:  # the lock is the first file written here
        check_writable(lock)
    except ConfigError as exc:
        where = f"data.cache_dir={data.cache_dir}" if data.cache_dir else "the data cache ($EMBER_CACHE/data)"
        raise ConfigError(f"{where}: {exc}; give a folder that can be written, or data.cache: false") from None
    with file_lock(lock):
        if (entry / _FILES).is_file():
            return _load(entry, recipe), True
        work = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}-"))
        try:
            result = process(data, recipe, tokenizer, renderer, work, progress)
            files = {split: [p.name for p in samples.paths]
                     for split, samples in (("train", result.train), ("eval", result.eval))}
            (work / _REPORT).write_text(json.dumps(result.report.to_dict(), ensure_ascii=False), encoding="utf-8")
            (work / _FILES).write_text(json.dumps(files), encoding="utf-8")  # written last: marks the entry whole
            if entry.exists():
                shutil.rmtree(entry)
            os.replace(work, entry)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        log.info("cached processed data in %s", entry)
    return _load(entry, recipe), False


def _load(entry: Path, recipe: Recipe) -> ProcessedData:
    files = json.loads((entry / _FILES).read_text(encoding="utf-8"))
    raw = json.loads((entry / _REPORT).read_text(encoding="utf-8"))
    known = DataReport.__dataclass_fields__
    report = DataReport(**{k: v for k, v in raw.items() if k in known})
    return ProcessedData(recipe.samples([entry / n for n in files["train"]]),
                         recipe.samples([entry / n for n in files["eval"]]), report)
