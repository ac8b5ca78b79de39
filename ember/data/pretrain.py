"""Raw text → fixed-length blocks for continued pretraining, with no token lost.

Documents are joined with EOS behind a leading BOS (EOS when the tokenizer has no BOS) into one stream. Block k covers
stream[k*(L-1) : k*(L-1)+L]: consecutive blocks share one token, so every token after the first is a prediction
target exactly once per epoch (the loss shifts labels by one inside each block). The last, shorter block is kept.
"""

from __future__ import annotations

from collections.abc import Iterable

from ember.data.render import IGNORE_INDEX, Encoded
from ember.data.tokenize import encode_plain
from ember.errors import ConfigError


def token_stream(tokenizer, documents: Iterable[str]) -> list[int]:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("continued pretraining joins documents with EOS, but the tokenizer has no eos_token")
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    stream = [start]
    texts = [d for d in documents if d]
    batch = tokenizer(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"] if texts else []
    for ids in batch:
        stream.extend(ids)
        stream.append(eos)
    return stream


def blocks(stream: list[int], max_length: int, source: str = "") -> list[Encoded]:
    step = max_length - 1
    out = []
    for begin in range(0, max(len(stream) - 1, 0), step):
        ids = stream[begin: begin + max_length]
        if len(ids) < 2:
            break
        labels = [IGNORE_INDEX] + ids[1:]  # the first token is context only: it was the previous block's target
        out.append(Encoded(ids, labels, f"{source}#block{len(out)}"))
    return out


def encode_documents(tokenizer, documents: Iterable[str], max_length: int, source: str = "") -> list[Encoded]:
    return blocks(token_stream(tokenizer, documents), max_length, source)


__all__ = ["blocks", "encode_documents", "encode_plain", "token_stream"]
