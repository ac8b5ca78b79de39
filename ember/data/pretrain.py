"""Raw text → fixed-length blocks for continued pretraining, with no token lost.

Documents are joined with EOS behind a leading BOS (EOS when the tokenizer has no BOS) into one stream. Block k covers
stream[k*(L-1) : k*(L-1)+L]: consecutive blocks share one token, so every token after the first is a prediction
target exactly once per epoch (the loss shifts labels by one inside each block). The last, shorter block is kept.
`BlockCutter` does this as the documents stream past, holding less than one block.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Optional

from ember.data.render import IGNORE_INDEX, Encoded
from ember.data.tokenize import encode_plain, encode_plain_batch
from ember.errors import ConfigError


class BlockCutter:
    """Feed token ids in stream order (`add_document` appends the EOS); blocks come out as soon as they are full;
    `close` gives the last, shorter one."""

    def __init__(self, max_length: int, source: str = "", start: Optional[list[int]] = None, eos: Optional[int] = None):
        self.max_length, self.source, self.eos = max_length, source, eos
        self.buffer = list(start or [])
        self.count = 0

    @classmethod
    def for_documents(cls, tokenizer, max_length: int, source: str = "") -> "BlockCutter":
        eos = tokenizer.eos_token_id
        if eos is None:
            raise ConfigError("continued pretraining joins documents with EOS, but the tokenizer has no eos_token")
        return cls(max_length, source, [tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos], eos)

    def add_document(self, ids: list[int]) -> Iterator[Encoded]:
        return self.feed([*ids, self.eos])

    def feed(self, ids: list[int]) -> Iterator[Encoded]:
        self.buffer.extend(ids)
        while len(self.buffer) >= self.max_length:
            yield self._block(self.buffer[: self.max_length])
            del self.buffer[: self.max_length - 1]  # the block's last token starts the next one

    def close(self) -> Iterator[Encoded]:
        if len(self.buffer) >= 2:
            yield self._block(self.buffer)
        self.buffer = self.buffer[-1:]

    def _block(self, ids: list[int]) -> Encoded:
        # The first token is context only: it was the previous block's target.
        block = Encoded(list(ids), [IGNORE_INDEX] + list(ids[1:]), f"{self.source}#block{self.count}")
        self.count += 1
        return block


def token_stream(tokenizer, documents: Iterable[str]) -> list[int]:
    cutter = BlockCutter.for_documents(tokenizer, 1 << 62)
    for ids in encode_plain_batch(tokenizer, [d for d in documents if d]):
        list(cutter.add_document(ids))
    return cutter.buffer


def blocks(stream: list[int], max_length: int, source: str = "") -> list[Encoded]:
    cutter = BlockCutter(max_length, source)
    return [*cutter.feed(stream), *cutter.close()]


def encode_documents(tokenizer, documents: Iterable[str], max_length: int, source: str = "") -> list[Encoded]:
    cutter = BlockCutter.for_documents(tokenizer, max_length, source)
    out = [block for ids in encode_plain_batch(tokenizer, [d for d in documents if d]) for block in cutter.add_document(ids)]
    return out + list(cutter.close())


__all__ = ["BlockCutter", "blocks", "encode_documents", "encode_plain", "token_stream"]
