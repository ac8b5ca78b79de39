"""Tokenise rendered chat text so that message content is data, never control.

A fast tokenizer first splits text at added/special tokens, then runs the model on each piece in between. We do the
same, but only split at special tokens the *template* emitted: special-token text inside a message (a user typing
`<|im_end|>`) is tokenised as ordinary text. When no content holds such text this is exactly
`tokenizer(text, add_special_tokens=False)`, i.e. what `apply_chat_template(tokenize=True)` produces.
"""

from __future__ import annotations

import bisect
import functools
import re
from collections.abc import Sequence

Span = tuple[int, int]


@functools.lru_cache(maxsize=32)
def _added_token_pattern(tokens: tuple[str, ...]) -> re.Pattern | None:
    if not tokens:
        return None
    # Longest first so that `<|im_start|>assistant`-style overlaps match the way the tokenizer's trie does.
    return re.compile("|".join(re.escape(t) for t in sorted(tokens, key=len, reverse=True)))


class EncodingOffsets(Sequence):
    """A fast tokenizer Encoding's (start, end) character span of each token, read one at a time. Building the list
    of every token's tuple costs several times what labelling reads of it (a few bisections per answer)."""

    __slots__ = ("_encoding", "_length")

    def __init__(self, encoding):
        self._encoding, self._length = encoding, len(encoding)

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Span:
        if index < 0:
            index += self._length
        if not 0 <= index < self._length:
            raise IndexError("token index out of range")
        return self._encoding.token_to_chars(index)

    def first_from(self, position: int) -> int:
        """The first token starting at or after character `position` (bisect_left over the starts), found from the
        token that holds that character: two lookups instead of a bisection's dozen."""
        token = self._encoding.char_to_token(position) if position >= 0 else None
        if token is None:  # past the end, or a character no token holds
            return bisect.bisect_left(self, position, key=_start)
        if self[token][0] >= position:
            while token > 0 and self[token - 1][0] >= position:
                token -= 1
            return token
        while token + 1 < self._length and self[token + 1][0] < position:
            token += 1
        return token + 1


def first_token_from(offsets: Sequence[Span], position: int) -> int:
    """The first token whose (start, end) offset starts at or after `position`; offsets start in order."""
    if isinstance(offsets, EncodingOffsets):
        return offsets.first_from(position)
    return bisect.bisect_left(offsets, position, key=_start)


def _start(offset: Span) -> int:
    return offset[0]


def added_tokens(tokenizer) -> tuple[str, ...]:
    return tuple(sorted(tokenizer.get_added_vocab()))


def holds_added_token(tokenizer, texts: Sequence[str]) -> bool:
    pattern = _added_token_pattern(added_tokens(tokenizer))
    return pattern is not None and any(pattern.search(t) for t in texts)


def tokenize_with_offsets(tokenizer, text: str, protected: Sequence[Span] = ()) -> tuple[list[int], list[Span]]:
    """Token ids and (start, end) character offsets of `text`; added tokens inside `protected` spans stay text."""
    pattern = _added_token_pattern(added_tokens(tokenizer))
    if pattern is None or not protected or not _protected_holds_added(pattern, text, protected):
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]
    hits = [
        (m.start(), m.end())
        for m in pattern.finditer(text)
        if not any(s < m.end() and m.start() < e for s, e in protected)
    ]
    ids: list[int] = []
    offsets: list[Span] = []
    vocab = tokenizer.get_added_vocab()
    cursor = 0
    for start, end in [*hits, (len(text), len(text))]:
        if start > cursor:
            piece = text[cursor:start]
            enc = tokenizer(piece, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
            ids.extend(enc["input_ids"])
            offsets.extend((s + cursor, e + cursor) for s, e in enc["offset_mapping"])
        if end > start:
            ids.append(vocab[text[start:end]])
            offsets.append((start, end))
        cursor = end
    return ids, offsets


def _protected_holds_added(pattern: re.Pattern, text: str, protected: Sequence[Span]) -> bool:
    return any(pattern.search(text, s, e) for s, e in protected)


def encode_plain(tokenizer, text: str) -> list[int]:
    """Ids of free text (a prompt continuation, a document) with special-token text kept as text."""
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def encode_plain_batch(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """`encode_plain` for many texts in one fast-tokenizer call."""
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)["input_ids"]]
