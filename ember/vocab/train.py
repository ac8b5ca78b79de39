"""Learn new pieces from a corpus with the `tokenizers` BPE trainer, spelled and pre-tokenized like the base.

Training in the base's own terms (byte-level alphabet and pre-tokenizer, or SentencePiece-style characters with
"▁") means every piece lies inside one of the base's pre-tokens and is built from symbols the base already has,
so each one can become a single merge of the base's BPE model.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, Optional

from tqdm.auto import tqdm

from ember.errors import ConfigError
from ember.vocab.spaces import BYTE_LEVEL, METASPACE, SPACE_MARK, SymbolSpace, detect_space

log = logging.getLogger(__name__)

GENERIC_PRE_TOKENIZER = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}


def train_pieces(
    documents: Sequence[str],
    vocab_size: int,
    base: Optional[dict] = None,
    min_frequency: int = 2,
    progress: bool = True,
) -> tuple[list[bytes], dict[str, Any]]:
    """Pieces learned from `documents` (highest priority first) and a description of the run.

    `vocab_size` is the size of the trained vocabulary, alphabet included (as for SentencePiece); `base` is the
    base's `tokenizer.json` as a dict (None: a generic byte-level, GPT-2-style pre-tokenizer).
    """
    from tokenizers import Tokenizer, trainers
    from tokenizers.pre_tokenizers import ByteLevel

    space = detect_space(base) if base is not None else SymbolSpace(BYTE_LEVEL)
    if min_frequency < 1:
        raise ConfigError(f"--min-frequency {min_frequency}: must be at least 1")
    alphabet = 256 if space.kind == BYTE_LEVEL else 0
    if vocab_size <= alphabet or vocab_size > 1_000_000:
        raise ConfigError(f"--vocab-size {vocab_size}: must be above {alphabet} (the alphabet) and at most 1,000,000")
    tok = Tokenizer.from_str(json.dumps(_skeleton(space, base)))
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        show_progress=progress,
        initial_alphabet=ByteLevel.alphabet() if space.kind == BYTE_LEVEL else [],
        special_tokens=[],
    )
    chars: Counter[str] = Counter()

    def stream():
        for doc in tqdm(documents, desc="reading corpus", unit="doc", disable=not progress):
            if space.kind == METASPACE:
                chars.update(doc)
            yield doc

    tok.train_from_iterator(stream(), trainer=trainer, length=len(documents))
    trained = json.loads(tok.to_str())["model"]
    symbols = [_merged(m) for m in trained["merges"]]
    if space.kind == METASPACE:
        # Characters first, most frequent first: the base may lack them, and every merge below builds on them.
        chars[SPACE_MARK] += chars.pop(" ", 0)
        alphabet_symbols = [c for c, n in chars.most_common() if n >= min_frequency and c in trained["vocab"]]
        symbols = alphabet_symbols + symbols
    # Alphabet characters count towards vocab_size as in SentencePiece; byte-level's 256 bytes are not pieces.
    pieces = list(dict.fromkeys(data for s in symbols if (data := space.to_bytes(s))))[: vocab_size - alphabet]
    if len(trained["vocab"]) < vocab_size:
        log.warning("the corpus only supports %d of the %d pieces asked for", len(trained["vocab"]), vocab_size)
    meta = {
        "trainer": "tokenizers BpeTrainer",
        "kind": space.kind,
        "vocab_size": vocab_size,
        "learned_vocab": len(trained["vocab"]),
        "min_frequency": min_frequency,
        "documents": len(documents),
        "characters": sum(len(d) for d in documents),
        "pre_tokenizer": _skeleton(space, base)["pre_tokenizer"],
    }
    return pieces, meta


def _merged(merge: Any) -> str:
    left, right = merge if isinstance(merge, (list, tuple)) else merge.split(" ", 1)
    return left + right


def _skeleton(space: SymbolSpace, base: Optional[dict]) -> dict:
    """An untrained BPE tokenizer with the base's normaliser and pre-tokenization."""
    normalizer = base.get("normalizer") if base else None
    if space.kind == BYTE_LEVEL:
        pre_tokenizer = base.get("pre_tokenizer") if base else GENERIC_PRE_TOKENIZER
    else:
        # Cut at every "▁" as SentencePiece does (split_by_whitespace), so pieces never span two words.
        base_pre = (base or {}).get("pre_tokenizer") or {}
        scheme = base_pre.get("prepend_scheme", "never") if base_pre.get("type") == "Metaspace" else "never"
        pre_tokenizer = {"type": "Metaspace", "replacement": SPACE_MARK, "prepend_scheme": scheme, "split": True}
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": normalizer,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": None,
        "decoder": None,
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                  "vocab": {}, "merges": []},
    }
