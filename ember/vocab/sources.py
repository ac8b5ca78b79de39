"""Open the tokenizer behind a name (registry name, folder, tokenizer.json, hub id); tell whether a model is there."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from ember.errors import ConfigError

WEIGHT_FILES = (
    "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json"
)


@dataclass
class TokenizerSource:
    source: str  # what the user typed
    path: str  # the local folder or tokenizer.json file it resolved to (or a hub id)
    tokenizer: Any  # a transformers tokenizer backed by `tokenizers`

    @property
    def backend(self):
        return self.tokenizer.backend_tokenizer

    @cached_property
    def json(self) -> dict:
        return json.loads(self.backend.to_str())

    @property
    def has_model(self) -> bool:
        folder = Path(self.path)
        return (folder / "config.json").is_file() and any((folder / name).is_file() for name in WEIGHT_FILES)


def open_tokenizer(source: str) -> TokenizerSource:
    """Load a tokenizer; raises `ConfigError` naming the source when it cannot be found or is not a fast tokenizer."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    p = Path(source).expanduser()
    if p.is_file() and p.name.endswith(".json"):
        return TokenizerSource(source, str(p), PreTrainedTokenizerFast(tokenizer_file=str(p)))
    if p.is_dir() and not (p / "config.json").is_file():
        if not any((p / name).is_file() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
            raise ConfigError(f"{p} holds no tokenizer (tokenizer.json / tokenizer.model) and no model (config.json)")
        path = str(p)
    else:
        from ember.models.loading import resolve_source

        path = resolve_source(source)
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot load a tokenizer from '{source}': {exc}") from None
    if getattr(tok, "backend_tokenizer", None) is None:
        raise ConfigError(f"'{source}' has no fast (`tokenizers`) tokenizer; vocabulary tools need tokenizer.json")
    return TokenizerSource(source, path, tok)
