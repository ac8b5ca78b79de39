"""Cache processed samples under a key made of everything that can change them.

The key covers: each input file's content hash, the tokenizer (vocab, special tokens, chat template), the template
source, the stage and every data option. A second run with the same key loads in well under a second.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import tempfile
from pathlib import Path
from typing import Optional

from ember.config.loader import to_dict
from ember.config.schema import DataConfig
from ember.data.pipeline import ProcessedData, process
from ember.data.render import Renderer, tokenizer_identity
from ember.core.paths import cache_root, file_digest, file_lock

log = logging.getLogger(__name__)
CACHE_VERSION = "1"  # bump when the processing code changes what it produces


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


def cache_key(data: DataConfig, stage: str, tokenizer, renderer: Optional[Renderer]) -> str:
    options = to_dict(data)
    options.pop("cache", None)
    options.pop("cache_dir", None)
    options.pop("num_proc", None)  # parallelism does not change the result
    payload = {
        "version": CACHE_VERSION,
        "stage": stage,
        "options": options,
        "inputs": [_input_digest(s.path) for s in data.datasets],
        "tokenizer": tokenizer_identity(tokenizer),
        "template": renderer.identity if renderer else None,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:24]


def load_or_process(data: DataConfig, stage: str, tokenizer, renderer: Optional[Renderer], progress: bool = True) -> tuple[ProcessedData, bool]:
    """Return (data, from_cache)."""
    if not data.cache:
        return process(data, stage, tokenizer, renderer, progress), False
    root = Path(data.cache_dir) if data.cache_dir else cache_root() / "data"
    key = cache_key(data, stage, tokenizer, renderer)
    path = root / f"{key}.pkl"
    with file_lock(root / f"{key}.lock"):
        if path.is_file():
            with open(path, "rb") as f:
                return pickle.load(f), True
        result = process(data, stage, tokenizer, renderer, progress)
        root.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=root, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, path)
        log.info("cached processed data as %s", path)
    return result, False
