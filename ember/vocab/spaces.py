"""How a BPE tokenizer spells text inside its model, and the way between that spelling and raw bytes.

Two spellings are supported:
- byte-level (GPT-2, SmolLM2, Qwen, Llama-3): every UTF-8 byte is one printable symbol (space = "Ġ");
- metaspace (SentencePiece converted to `tokenizers`, Llama-2 style): characters as they are, space = "▁",
  characters missing from the vocabulary fall back to `<0xNN>` byte tokens.

Pieces are stored as raw bytes, so pieces learned in one spelling can extend a tokenizer of the other.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Any, Iterator, Optional

from ember.errors import ConfigError

BYTE_LEVEL = "byte_level"
METASPACE = "metaspace"
SPACE_MARK = "▁"
_BYTE_TOKEN = re.compile(r"^<0x([0-9A-Fa-f]{2})>$")

SUPPORTED = (
    "extension works on BPE tokenizers: byte-level ones (GPT-2, SmolLM2, Qwen, Llama-3 style) and "
    "SentencePiece-style ones with '▁' spaces (Llama-2 style)"
)


@functools.lru_cache(maxsize=1)
def byte_to_symbol() -> dict[int, str]:
    """The byte-level alphabet: printable bytes map to themselves, the other 68 to code points from U+0100 on."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


@functools.lru_cache(maxsize=1)
def symbol_to_byte() -> dict[str, int]:
    return {s: b for b, s in byte_to_symbol().items()}


@dataclass(frozen=True)
class SymbolSpace:
    kind: str
    split_on_space: bool = False  # a metaspace pre-tokenizer that cuts before every "▁"

    def to_symbols(self, data: bytes) -> Optional[str]:
        """The model-side spelling of `data`, or None where this spelling cannot hold it (partial UTF-8)."""
        if self.kind == BYTE_LEVEL:
            table = byte_to_symbol()
            return "".join(table[b] for b in data)
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None  # metaspace models already hold every byte as a <0xNN> fallback token
        return text.replace(" ", SPACE_MARK)

    def to_bytes(self, symbol: str) -> Optional[bytes]:
        """Raw bytes of a vocabulary entry, or None for entries that are not text (special tokens)."""
        if self.kind == BYTE_LEVEL:
            table = symbol_to_byte()
            try:
                return bytes(table[ch] for ch in symbol)
            except KeyError:
                return None
        match = _BYTE_TOKEN.match(symbol)
        if match:
            return bytes([int(match.group(1), 16)])
        return symbol.replace(SPACE_MARK, " ").encode("utf-8")

    def is_byte_token(self, symbol: str) -> bool:
        """A token that does not cover whole characters: a `<0xNN>` fallback or a partial UTF-8 sequence."""
        if _BYTE_TOKEN.match(symbol):
            return True
        if self.kind != BYTE_LEVEL:
            return False
        data = self.to_bytes(symbol)
        if data is None:
            return False
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return True
        return False


def _components(node: Any) -> Iterator[dict]:
    """Every component of a normaliser / pre-tokenizer / decoder tree, `Sequence`s flattened."""
    if isinstance(node, dict):
        yield node
        for key in ("normalizers", "pretokenizers", "decoders"):
            for child in node.get(key) or []:
                yield from _components(child)


def detect_space(tokenizer_json: dict) -> SymbolSpace:
    """Which spelling a `tokenizer.json` uses; raises `ConfigError` for tokenizers extension cannot edit."""
    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        raise ConfigError(f"the tokenizer's model is {model.get('type')!r}, not BPE: {SUPPORTED}")
    if model.get("continuing_subword_prefix") or model.get("end_of_word_suffix"):
        raise ConfigError(f"BPE with subword prefixes/suffixes (WordPiece-like) is not supported: {SUPPORTED}")
    parts = [*_components(tokenizer_json.get("normalizer")), *_components(tokenizer_json.get("pre_tokenizer"))]
    decoders = list(_components(tokenizer_json.get("decoder")))
    if any(p.get("type") == "ByteLevel" for p in parts + decoders):
        return SymbolSpace(BYTE_LEVEL)
    metaspace = [p for p in parts if p.get("type") == "Metaspace"]
    replaces_space = any(
        p.get("type") == "Replace" and (p.get("pattern") or {}).get("String") in (" ", SPACE_MARK)
        for p in parts + decoders
    )
    if metaspace or replaces_space or model.get("byte_fallback"):
        return SymbolSpace(METASPACE, split_on_space=any(bool(p.get("split")) for p in metaspace))
    raise ConfigError(f"cannot tell how this BPE tokenizer spells spaces and bytes: {SUPPORTED}")
