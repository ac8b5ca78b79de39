"""`ember vocab train | extend | stats`: argparse wiring over the public functions of `ember.vocab`.

`register(subparsers)` adds the `vocab` command; every subcommand stores its handler as `func`, a function of
the parsed arguments returning an exit code. `python -m ember.vocab.cli ...` runs the command on its own.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from ember.errors import ConfigError, EmberError


def register(subparsers) -> None:
    vocab = subparsers.add_parser(
        "vocab",
        help="extend a tokenizer with new (e.g. Chinese) pieces and resize the model to match",
        description="Learn pieces from a corpus, merge them into a base tokenizer, and compare tokenizers.",
    )
    sub = vocab.add_subparsers(dest="vocab_command", metavar="{train,extend,stats}", required=True)

    train = sub.add_parser("train", help="learn new pieces from a corpus (tokenizers BPE)")
    train.add_argument("--corpus", nargs="+", required=True, metavar="FILE",
                       help=".txt / .jsonl / .json files or folders")
    train.add_argument("--vocab-size", type=int, required=True, metavar="N", help="size of the learned vocabulary")
    train.add_argument("--out", required=True, metavar="DIR", help="pieces folder to write")
    train.add_argument("--base", metavar="MODEL", help="learn in this tokenizer's spelling and pre-tokenization "
                       "(recommended; default: generic byte-level)")
    train.add_argument("--field", help="JSON key holding the text (default: text/content/paragraphs/context...)")
    train.add_argument("--min-frequency", type=int, default=2, metavar="N", help="keep pairs seen at least N times")
    train.set_defaults(func=run_train)

    extend = sub.add_parser("extend", help="merge pieces into a base tokenizer (and resize a model)")
    extend.add_argument("--base", required=True, metavar="MODEL", help="base tokenizer or model: name, folder, hub id")
    extend.add_argument("--pieces", required=True, metavar="DIR", help="folder written by `ember vocab train`")
    extend.add_argument("--out", required=True, metavar="DIR", help="folder for the extended tokenizer (and model)")
    extend.add_argument("--max-new", type=int, metavar="N", help="add at most N tokens (highest priority first)")
    extend.add_argument("--keep-ascii", action="store_true",
                        help="also add pure-ASCII pieces (default: skip them, so ASCII text tokenizes as before)")
    extend.add_argument("--model", metavar="MODEL", help="model to resize (default: --base when it is a model)")
    extend.add_argument("--tokenizer-only", action="store_true", help="write only the tokenizer, even for a model")
    extend.add_argument("--pad-multiple", type=int, default=64, metavar="N", help="round embedding rows up to N")
    extend.set_defaults(func=run_extend)

    stats = sub.add_parser("stats", help="tokens per character, reduction, byte share and speed of tokenizers")
    stats.add_argument("--tokenizer", action="append", required=True, metavar="TOK",
                       help="tokenizer to measure (repeat; the first is the reference)")
    stats.add_argument("--corpus", nargs="+", required=True, metavar="FILE")
    stats.add_argument("--field", help="JSON key holding the text")
    stats.add_argument("--repeats", type=int, default=3, help="timing passes (best one counts)")
    stats.add_argument("--json", metavar="FILE", help="also write the figures as JSON ('-' prints JSON instead)")
    stats.set_defaults(func=run_stats)


def run_train(args: argparse.Namespace) -> int:
    from ember.vocab.corpus import read_corpus
    from ember.vocab.pieces import save_pieces
    from ember.vocab.sources import open_tokenizer
    from ember.vocab.train import train_pieces

    _check_out(args.out)
    docs = read_corpus(args.corpus, field=args.field)
    base = open_tokenizer(args.base).json if args.base else None
    pieces, meta = train_pieces(docs, args.vocab_size, base=base, min_frequency=args.min_frequency)
    meta.update(base=args.base, corpus=[str(c) for c in args.corpus])
    save_pieces(args.out, pieces, meta)
    chars = meta["characters"]
    print(f"learned {len(pieces):,} pieces from {len(docs):,} documents ({chars:,} characters) -> {args.out}")
    return 0


def run_extend(args: argparse.Namespace) -> int:
    from ember.vocab.extend import extend_vocab

    _check_out(args.out)
    if args.model and args.tokenizer_only:
        raise ConfigError("--model and --tokenizer-only contradict each other: drop one")
    summary = extend_vocab(
        args.base, args.pieces, args.out, max_new=args.max_new, keep_ascii=args.keep_ascii, model=args.model,
        tokenizer_only=args.tokenizer_only, multiple=args.pad_multiple,
    )
    what = "tokenizer and model" if summary.model else "tokenizer"
    print(
        f"added {summary.new_tokens:,} tokens to {summary.base_vocab:,} (ids from {summary.first_new_id:,}); "
        f"padded vocab {summary.padded_vocab:,}; {what} written to {args.out}"
    )
    for reason, n in summary.skipped.items():
        print(f"  skipped {n:,} pieces: {reason}")
    return 0


def run_stats(args: argparse.Namespace) -> int:
    from ember.vocab.corpus import read_corpus
    from ember.vocab.sources import open_tokenizer
    from ember.vocab.stats import compare_tokenizers, format_table, stats_json

    docs = read_corpus(args.corpus, field=args.field)
    toks = [(name, open_tokenizer(name).backend) for name in args.tokenizer]
    rows = compare_tokenizers(toks, docs, repeats=args.repeats, progress=True)
    report = json.dumps(stats_json(rows), indent=2, ensure_ascii=False)
    if args.json == "-":
        print(report)
        return 0
    print(format_table(rows))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(report + "\n", encoding="utf-8")
    return 0


def _check_out(out: str) -> None:
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--out {out}: is a file; give a folder")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ember")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        return args.func(args)
    except EmberError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
