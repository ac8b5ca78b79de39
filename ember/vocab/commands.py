"""What `ember vocab train | extend | stats` do, as functions of plain values that return the message to print."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

from ember.errors import ConfigError


def _check_out(out: str) -> None:
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a folder")


def learn(corpus: Sequence[str], vocab_size: int, out: str, base: Optional[str] = None, field: Optional[str] = None,
          min_frequency: int = 2) -> str:
    """Learn `vocab_size` pieces from the corpus files (in `base`'s spelling) into the folder `out`."""
    from ember.vocab.corpus import read_corpus
    from ember.vocab.pieces import save_pieces
    from ember.vocab.sources import open_tokenizer
    from ember.vocab.train import train_pieces

    _check_out(out)
    docs = read_corpus(corpus, field=field)
    base_json = open_tokenizer(base).json if base else None
    pieces, meta = train_pieces(docs, vocab_size, base=base_json, min_frequency=min_frequency)
    meta.update(base=base, corpus=[str(c) for c in corpus])
    save_pieces(out, pieces, meta)
    return f"learned {len(pieces):,} pieces from {len(docs):,} documents ({meta['characters']:,} characters) -> {out}"


def extend(base: str, pieces: str, out: str, max_new: Optional[int] = None, keep_ascii: bool = False,
           model: Optional[str] = None, tokenizer_only: bool = False, pad_multiple: int = 64) -> str:
    """Merge the pieces into the base tokenizer (and resize the model); raises ConfigError on contradictory options."""
    from ember.vocab.extend import extend_vocab

    _check_out(out)
    if model and tokenizer_only:
        raise ConfigError("--model and --tokenizer-only contradict each other: drop one")
    summary = extend_vocab(base, pieces, out, max_new=max_new, keep_ascii=keep_ascii, model=model,
                           tokenizer_only=tokenizer_only, multiple=pad_multiple)
    what = "tokenizer and model" if summary.model else "tokenizer"
    lines = [f"added {summary.new_tokens:,} tokens to {summary.base_vocab:,} (ids from {summary.first_new_id:,}); "
             f"padded vocab {summary.padded_vocab:,}; {what} written to {out}"]
    lines += [f"  skipped {n:,} pieces: {reason}" for reason, n in summary.skipped.items()]
    return "\n".join(lines)


def compare(tokenizers: Sequence[str], corpus: Sequence[str], field: Optional[str] = None, repeats: int = 3,
            json_out: Optional[str] = None) -> str:
    """The comparison table (or, with json_out='-', the JSON) of tokenizers on the corpus."""
    from ember.vocab.corpus import read_corpus
    from ember.vocab.sources import open_tokenizer
    from ember.vocab.stats import compare_tokenizers, format_table, stats_json

    docs = read_corpus(corpus, field=field)
    rows = compare_tokenizers([(name, open_tokenizer(name).backend) for name in tokenizers], docs, repeats=repeats,
                              progress=True)
    report = json.dumps(stats_json(rows), indent=2, ensure_ascii=False)
    if json_out == "-":
        return report
    if json_out:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(report + "\n", encoding="utf-8")
    return format_table(rows)
