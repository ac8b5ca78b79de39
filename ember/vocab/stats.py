"""Compression report: how many tokens each tokenizer needs for a corpus, how many of them are bytes, how fast.

- tokens_per_char: tokens / characters (Python `len`, i.e. code points), special tokens not added;
- reduction: 1 - tokens / tokens of the first tokenizer (the reference);
- unknown_share: tokens that are the unk token; byte_share: tokens that do not cover whole characters
  (`<0xNN>` byte fallback, or a byte-level token whose bytes are not complete UTF-8);
- chars_per_second: characters / CPU seconds of one single-threaded `encode_batch` pass, best of `repeats`
  passes with the tokenizers interleaved. CPU time rather than wall time, because on a shared machine the wall
  time of the same pass varied by 2x while its CPU time held within a few percent; speed_ratio is relative to
  the first tokenizer.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from tqdm.auto import tqdm

from ember.errors import ConfigError, DataError
from ember.vocab.spaces import SymbolSpace, detect_space

COLUMNS = (
    ("tokenizer", "name", "{}"),
    ("vocab", "vocab_size", "{:,}"),
    ("tokens", "tokens", "{:,}"),
    ("tok/char", "tokens_per_char", "{:.4f}"),
    ("reduction", "reduction", "{:+.2%}"),
    ("unk", "unknown_share", "{:.2%}"),
    ("bytes", "byte_share", "{:.2%}"),
    ("chars/s", "chars_per_second", "{:,.0f}"),
    ("speed", "speed_ratio", "{:.2f}x"),
)


@dataclass
class TokenizerStats:
    name: str
    vocab_size: int
    characters: int
    tokens: int
    tokens_per_char: float
    reduction: float
    unknown_tokens: int
    unknown_share: float
    byte_tokens: int
    byte_share: float
    chars_per_second: float
    speed_ratio: float


def compare_tokenizers(
    tokenizers: Sequence[tuple[str, Any]], documents: Sequence[str], repeats: int = 3, progress: bool = False
) -> list[TokenizerStats]:
    """Stats for each `(name, tokenizers.Tokenizer)` on `documents`; the first tokenizer is the reference."""
    if not tokenizers:
        raise ConfigError("give at least one tokenizer")
    if repeats < 1:
        raise ConfigError(f"--repeats {repeats}: must be at least 1")
    characters = sum(len(d) for d in documents)
    if characters == 0:
        raise DataError("--corpus", None, "the corpus has no characters to measure on")
    docs = list(documents)
    best = [float("inf")] * len(tokenizers)
    counts: list[tuple[int, int, int]] = []
    for rep in tqdm(range(repeats), desc="encoding", unit="pass", disable=not progress):
        for k, (_, tok) in enumerate(tokenizers):
            seconds, encodings = _timed_encode(tok, docs)
            best[k] = min(best[k], seconds)
            if rep == 0:
                counts.append(_count(tok, encodings))
    ref_tokens, ref_speed = counts[0][0], characters / best[0]
    rows = []
    for (name, tok), (tokens, unknown, byte), seconds in zip(tokenizers, counts, best, strict=True):
        speed = characters / seconds
        rows.append(
            TokenizerStats(
                name=name,
                vocab_size=tok.get_vocab_size(with_added_tokens=True),
                characters=characters,
                tokens=tokens,
                tokens_per_char=tokens / characters,
                reduction=1.0 - tokens / ref_tokens if ref_tokens else 0.0,
                unknown_tokens=unknown,
                unknown_share=unknown / tokens if tokens else 0.0,
                byte_tokens=byte,
                byte_share=byte / tokens if tokens else 0.0,
                chars_per_second=speed,
                speed_ratio=speed / ref_speed,
            )
        )
    return rows


def _timed_encode(tok: Any, docs: list[str]) -> tuple[float, list]:
    previous = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one thread: comparable on a shared machine
    try:
        start = time.process_time()
        encodings = tok.encode_batch(docs, add_special_tokens=False)
        return max(time.process_time() - start, 1e-9), encodings
    finally:
        if previous is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = previous


def _count(tok: Any, encodings: list) -> tuple[int, int, int]:
    """(tokens, unknown tokens, byte tokens) over all encodings."""
    unk_ids, byte_ids = token_classes(tok)
    tokens = unknown = byte = 0
    for enc in encodings:
        for i in enc.ids:
            tokens += 1
            unknown += i in unk_ids
            byte += i in byte_ids
    return tokens, unknown, byte


def token_classes(tok: Any) -> tuple[set[int], set[int]]:
    """(unk ids, byte ids) of a `tokenizers.Tokenizer`; see the module docstring for what counts as a byte."""
    spec = json.loads(tok.to_str())
    model = spec.get("model") or {}
    try:
        space = detect_space(spec)
    except ConfigError:
        space = SymbolSpace("other")
    unk = model.get("unk_token")
    unk_ids = {tok.token_to_id(unk)} - {None} if unk else set()
    specials = {t["id"] for t in spec.get("added_tokens", [])}
    byte_ids = set()
    for symbol, i in tok.get_vocab(with_added_tokens=False).items():
        if i in specials:
            continue
        if space.is_byte_token(symbol):
            byte_ids.add(i)
    return unk_ids, byte_ids


def format_table(rows: Sequence[TokenizerStats]) -> str:
    cells = [[title for title, _, _ in COLUMNS]]
    for row in rows:
        cells.append([fmt.format(getattr(row, key)) for _, key, fmt in COLUMNS])
    widths = [max(len(r[i]) for r in cells) for i in range(len(COLUMNS))]
    lines = []
    for n, r in enumerate(cells):
        pairs = enumerate(zip(r, widths, strict=True))
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in pairs))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    chars = rows[0].characters if rows else 0
    lines.append(f"({chars:,} characters; reduction and speed relative to {rows[0].name if rows else '-'})")
    return "\n".join(lines)


def stats_json(rows: Sequence[TokenizerStats]) -> dict[str, Any]:
    return {"reference": rows[0].name if rows else None, "tokenizers": [asdict(r) for r in rows]}
