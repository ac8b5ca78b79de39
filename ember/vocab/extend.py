"""`ember vocab extend` as a function: extended tokenizer (and, given a model, resized weights) written to a folder."""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ember.errors import ConfigError
from ember.vocab.embeddings import PAD_MULTIPLE, base_piece_ids, padded_size, resize_and_init
from ember.vocab.merge import ExtendResult, extend_tokenizer_json
from ember.vocab.pieces import load_pieces
from ember.vocab.sources import open_tokenizer

log = logging.getLogger(__name__)

SUMMARY_FILE = "ember_vocab.json"
STALE_FILES = ("tokenizer.model", "vocab.json", "merges.txt", "vocab.txt")  # would disagree with tokenizer.json


@dataclass
class ExtendSummary:
    base_vocab: int  # len(base tokenizer)
    new_tokens: int
    padded_vocab: int  # embedding rows of the written model (or that a model would get)
    base: str
    model: Optional[str]  # the resized model's source; None when only the tokenizer was written
    first_new_id: int
    skipped: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def extend_vocab(
    base: str,
    pieces: str | Path | Sequence[bytes],
    out: str | Path,
    max_new: Optional[int] = None,
    keep_ascii: bool = False,
    model: Optional[str] = None,
    tokenizer_only: bool = False,
    multiple: int = PAD_MULTIPLE,
    progress: bool = True,
) -> ExtendSummary:
    """Extend `base`'s tokenizer with `pieces` (a folder from `train` or a list of bytes) into `out`.

    `keep_ascii` also adds pure-ASCII pieces (see `extend_tokenizer_json`). The model is resized too when `model`
    is given, or when `base` is a model folder/name and not `tokenizer_only`.
    """
    src = open_tokenizer(base)
    piece_list = load_pieces(pieces) if isinstance(pieces, (str, Path)) else list(pieces)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a folder to write the extended tokenizer into")
    result = extend_tokenizer_json(src.json, piece_list, max_new=max_new, keep_ascii=keep_ascii, progress=progress)
    if result.new_tokens == 0:
        raise ConfigError(f"none of the {len(piece_list)} pieces is new to '{base}' ({dict(result.skipped)})")
    new_tok = save_tokenizer(src.tokenizer, result, out)
    model_source = model or (src.path if src.has_model and not tokenizer_only else None)
    rows = padded_size(len(new_tok), multiple)
    if model_source is not None:
        rows = _write_model(model_source, src, result, len(new_tok), out, multiple)
    summary = ExtendSummary(
        base_vocab=len(src.tokenizer),
        new_tokens=result.new_tokens,
        padded_vocab=rows,
        base=base,
        model=model_source and str(model_source),
        first_new_id=result.base_size,
        skipped=dict(result.skipped),
    )
    (out / SUMMARY_FILE).write_text(json.dumps(summary.to_json(), indent=2, ensure_ascii=False) + "\n")
    log.info("added %d tokens (ids %d..%d) to %s", result.new_tokens, result.base_size, len(new_tok) - 1, out)
    return summary


def save_tokenizer(base_tokenizer: Any, result: ExtendResult, out: Path) -> Any:
    """Write the base's tokenizer files with the extended tokenizer.json; returns the reloaded tokenizer."""
    from transformers import AutoTokenizer

    out.mkdir(parents=True, exist_ok=True)
    base_tokenizer.save_pretrained(out)
    for name in STALE_FILES:
        (out / name).unlink(missing_ok=True)
    (out / "tokenizer.json").write_text(json.dumps(result.tokenizer_json, ensure_ascii=False) + "\n", encoding="utf-8")
    reloaded = AutoTokenizer.from_pretrained(out)
    expected = result.base_size + result.new_tokens
    if len(reloaded) != expected:
        raise RuntimeError(f"{out}: the saved tokenizer reloads with {len(reloaded)} tokens, expected {expected}")
    return reloaded


def _write_model(source: str, src: Any, result: ExtendResult, vocab_size: int, out: Path, multiple: int) -> int:
    from ember.config.schema import ModelConfig
    from ember.models.loading import load_model

    log.info("loading %s to resize its embeddings", source)
    model = load_model(ModelConfig(name_or_path=str(source)))
    symbols = [symbol for _, symbol in result.added]
    pairs = list(zip([i for i, _ in result.added], base_piece_ids(src.backend, symbols), strict=True))
    rows = resize_and_init(model, pairs, vocab_size, len(src.tokenizer), multiple)
    model.save_pretrained(out)
    return rows
