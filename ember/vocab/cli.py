"""`ember vocab train | extend | stats`: parse the arguments and call one function of `ember.vocab.commands` each."""

from __future__ import annotations


def cmd_train(args) -> int:
    from ember.vocab.commands import learn

    print(learn(args.corpus, args.vocab_size, args.out, base=args.base, field=args.field,
                min_frequency=args.min_frequency))
    return 0


def cmd_extend(args) -> int:
    from ember.vocab.commands import extend

    print(extend(args.base, args.pieces, args.out, max_new=args.max_new, keep_ascii=args.keep_ascii, model=args.model,
                 tokenizer_only=args.tokenizer_only, pad_multiple=args.pad_multiple))
    return 0


def cmd_stats(args) -> int:
    from ember.vocab.commands import compare

    print(compare(args.tokenizer, args.corpus, field=args.field, repeats=args.repeats, json_out=args.json))
    return 0


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
    train.set_defaults(func=cmd_train)

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
    extend.set_defaults(func=cmd_extend)

    stats = sub.add_parser("stats", help="tokens per character, reduction, byte share and speed of tokenizers")
    stats.add_argument("--tokenizer", action="append", required=True, metavar="TOK",
                       help="tokenizer to measure (repeat; the first is the reference)")
    stats.add_argument("--corpus", nargs="+", required=True, metavar="FILE")
    stats.add_argument("--field", help="JSON key holding the text")
    stats.add_argument("--repeats", type=int, default=3, help="timing passes (best one counts)")
    stats.add_argument("--json", metavar="FILE", help="also write the figures as JSON ('-' prints JSON instead)")
    stats.set_defaults(func=cmd_stats)
