"""Merge pieces into a BPE `tokenizer.json` so that ordinary tokenization produces them.

Each new piece becomes one vocabulary entry with the next free id plus one merge appended after all existing
merges: the base splits the piece (with the merges it has so far, new ones included) into exactly two parts, and
the new merge joins them. A piece the base splits into more than two parts is skipped; pieces come in the
trainer's order, so the parts a piece needs were offered before it. Nothing else in the tokenizer changes: old
ids, old merges, normaliser, pre-tokenizer, decoder and added tokens stay as they are.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Optional

from tqdm.auto import tqdm

from ember.errors import ConfigError
from ember.vocab.spaces import BYTE_LEVEL, SPACE_MARK, SymbolSpace, detect_space


class BpeSplitter:
    """The base's BPE merge loop (lowest rank first, leftmost on ties), as `tokenizers` runs it on one word."""

    def __init__(self, vocab: dict[str, int], merges: Iterable[tuple[str, str]]):
        self.vocab = vocab
        self.ranks: dict[tuple[str, str], int] = {}
        for pair in merges:
            self.ranks.setdefault(pair, len(self.ranks))

    def split(self, symbol: str) -> list[str]:
        parts = list(symbol)
        while len(parts) > 1:
            best: Optional[tuple[int, int]] = None
            for i in range(len(parts) - 1):
                rank = self.ranks.get((parts[i], parts[i + 1]))
                if rank is not None and (best is None or rank < best[0]):
                    best = (rank, i)
            if best is None:
                break
            i = best[1]
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return parts

    def add(self, left: str, right: str, token_id: int) -> None:
        self.ranks[(left, right)] = len(self.ranks)
        self.vocab[left + right] = token_id


@dataclass
class ExtendResult:
    tokenizer_json: dict
    space: SymbolSpace
    base_size: int  # ids below this are the base's (vocabulary and added tokens)
    added: list[tuple[int, str]] = field(default_factory=list)  # (new id, model-side spelling), in id order
    skipped: Counter = field(default_factory=Counter)  # reason -> pieces

    @property
    def new_tokens(self) -> int:
        return len(self.added)


def extend_tokenizer_json(
    base: dict,
    pieces: Iterable[bytes],
    max_new: Optional[int] = None,
    keep_ascii: bool = False,
    progress: bool = False,
) -> ExtendResult:
    """A copy of `base` (a parsed tokenizer.json) extended with up to `max_new` of `pieces`.

    Pure-ASCII pieces (digit groups, English fragments of the corpus) are skipped unless `keep_ascii`: the base
    already covers its own script, and without them ASCII text tokenizes exactly as before (every new merge has
    a non-ASCII side, so none can fire on ASCII text).
    """
    from tokenizers import Tokenizer

    if max_new is not None and max_new < 1:
        raise ConfigError(f"--max-new {max_new}: must be at least 1 (or left out for all pieces)")
    space = detect_space(base)
    out = copy.deepcopy(base)
    model = out["model"]
    string_merges = bool(model["merges"]) and isinstance(model["merges"][0], str)
    base_merges = [tuple(m.split(" ", 1)) if string_merges else tuple(m) for m in model["merges"]]
    vocab: dict[str, int] = dict(model["vocab"])
    specials = {t["content"] for t in base.get("added_tokens", [])}
    base_size = 1 + max([*vocab.values(), *(t["id"] for t in base.get("added_tokens", []))])
    splitter = BpeSplitter(vocab, base_merges)
    checker = _BoundaryCheck(Tokenizer.from_str(json.dumps(base)), space)
    result = ExtendResult(out, space, base_size)
    new_merges: list[tuple[str, str]] = []
    pieces = list(pieces)
    for data in tqdm(pieces, desc="merging pieces", unit="piece", disable=not progress):
        if max_new is not None and result.new_tokens >= max_new:
            break
        symbol = space.to_symbols(data)
        if symbol is None:
            result.skipped["not representable (partial UTF-8 in a SentencePiece-style tokenizer)"] += 1
            continue
        if symbol in vocab:
            result.skipped["already in the base"] += 1
            continue
        if not keep_ascii and data.isascii():
            result.skipped["pure ASCII (kept only with keep_ascii)"] += 1
            continue
        reason = checker.problem(data, symbol, specials)
        if reason:
            result.skipped[reason] += 1
            continue
        token_id = base_size + result.new_tokens
        if len(symbol) == 1:  # a character the SentencePiece-style base only had as byte fallback: no merge needed
            vocab[symbol] = token_id
        else:
            parts = splitter.split(symbol)
            if len(parts) != 2 or any(p not in vocab for p in parts):
                result.skipped["needs more than one merge from the base's pieces"] += 1
                continue
            splitter.add(parts[0], parts[1], token_id)
            new_merges.append((parts[0], parts[1]))
        result.added.append((token_id, symbol))
    model["vocab"] = vocab
    model["merges"] = model["merges"] + [f"{a} {b}" if string_merges else [a, b] for a, b in new_merges]
    return result


class _BoundaryCheck:
    """Why a piece can never come out of ordinary tokenization (None when it can)."""

    def __init__(self, base_tokenizer: Any, space: SymbolSpace):
        self.tok = base_tokenizer
        self.space = space

    def problem(self, data: bytes, symbol: str, specials: set[str]) -> Optional[str]:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None  # part of one character: always inside a pre-token
        if text in specials:
            return "equals an added/special token"
        if self.space.kind == BYTE_LEVEL:
            if self.tok.normalizer is not None and self.tok.normalizer.normalize_str(text) != text:
                return "changed by the base's normaliser"
            if self.tok.pre_tokenizer is not None:
                words = self.tok.pre_tokenizer.pre_tokenize_str(text)
                if len(words) != 1 or words[0][0] != symbol:
                    return "crosses a pre-token boundary of the base"
            return None
        if self.space.split_on_space and SPACE_MARK in symbol[1:]:
            return "crosses a pre-token boundary of the base"
        return None
