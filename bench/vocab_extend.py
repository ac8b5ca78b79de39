"""Benchmark: extend SmolLM2's tokenizer with Chinese pieces and measure it on held-out Chinese text.

Corpus (from ../shared/data, or $EMBER_SHARED_DATA): modern Chinese prose (Firefly pretrain samples, cmrc2018
Wikipedia contexts) and classical Chinese (chinese-poetry). MOSS/ShareGPT are left out: their turns mix code,
English and role tags. Documents (a record, a context paragraph, a poem/chapter) are split deterministically:
every 10th document is held out, the other 90% train the pieces.

Targets: >= 54% fewer tokens than SmolLM2 on the held-out text with <= 20,000 new tokens; encode speed >= 0.8x.

    python bench/vocab_extend.py            # writes bench/results/vocab_extend.{json,md}
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import shared_data  # noqa: E402

SOURCES = [
    "pretrain/firefly/dummy_pretrain.jsonl",
    "pretrain/firefly_llama2_chinese/dummy_data.jsonl",
    "pretrain/chinese_poetry",
    "eval/cmrc2018",
]
ENGLISH = "pretrain/llamafactory/c4_demo.jsonl"  # a check that English tokenization is unaffected
BASE = "smollm2-135m-instruct"
TARGET_REDUCTION, TARGET_SPEED, MAX_NEW = 0.54, 0.8, 20_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab-size", type=int, default=40_000, help="trained piece vocabulary (>= MAX_NEW + overlap)")
    parser.add_argument("--max-new", type=int, default=MAX_NEW)
    parser.add_argument("--curve", default="2500,5000,10000,15000", help="also measure these smaller caps")
    parser.add_argument("--repeats", type=int, default=7, help="timing passes; the best counts")
    parser.add_argument("--with-model", type=int, default=0, metavar="N",
                        help="also resize SmolLM2 and compare its loss per character on N held-out documents")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results"))
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tokenizers import Tokenizer

    from ember.vocab import compare_tokenizers, extend_tokenizer_json, format_table, open_tokenizer, read_corpus
    from ember.vocab.train import train_pieces

    data = shared_data()
    docs = read_corpus([data / s for s in SOURCES])
    train = [d for i, d in enumerate(docs) if i % 10]
    held = [d for i, d in enumerate(docs) if i % 10 == 0]
    english = read_corpus([data / ENGLISH])[::10]
    print(f"corpus: {len(docs):,} documents, {sum(map(len, docs)):,} chars; train {len(train):,} docs "
          f"({sum(map(len, train)):,} chars), held out {len(held):,} docs ({sum(map(len, held)):,} chars)")

    base = open_tokenizer(BASE)
    start = time.perf_counter()
    pieces, meta = train_pieces(train, args.vocab_size, base=base.json, progress=False)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    result = extend_tokenizer_json(base.json, pieces, max_new=args.max_new)
    merge_s = time.perf_counter() - start
    extended = Tokenizer.from_str(json.dumps(result.tokenizer_json))
    print(f"trained {len(pieces):,} pieces in {train_s:.1f} s; merged {result.new_tokens:,} in {merge_s:.1f} s "
          f"(skipped: {dict(result.skipped)})")

    for doc, enc in zip(held, extended.encode_batch(held, add_special_tokens=False), strict=True):
        assert extended.decode(enc.ids, skip_special_tokens=False) == doc, "round trip failed"

    pair = [("SmolLM2 (original)", base.backend), (f"SmolLM2 + {result.new_tokens:,} zh", extended)]
    rows = compare_tokenizers(pair, held, repeats=args.repeats)
    english_rows = compare_tokenizers(pair, english, repeats=args.repeats)
    print("\nheld-out Chinese\n" + format_table(rows))
    print("\nEnglish (C4 sample)\n" + format_table(english_rows))

    curve = []
    ref_tokens = rows[0].tokens
    for cap in [int(c) for c in args.curve.split(",") if c] + [args.max_new]:
        capped = Tokenizer.from_str(json.dumps(extend_tokenizer_json(base.json, pieces, max_new=cap).tokenizer_json))
        tokens = sum(len(e.ids) for e in capped.encode_batch(held, add_special_tokens=False))
        curve.append({"max_new": cap, "tokens": tokens, "reduction": 1 - tokens / ref_tokens})
    print("\nreduction by number of new tokens: " + ", ".join(f"{c['max_new']:,}: {c['reduction']:.1%}" for c in curve))

    model_check = _model_check(base, result, held[: args.with_model]) if args.with_model else None

    ext = rows[1]
    figures = {
        "base": BASE,
        "sources": SOURCES,
        "split": "every 10th document held out",
        "train_documents": len(train),
        "train_characters": sum(map(len, train)),
        "heldout_documents": len(held),
        "heldout_characters": ext.characters,
        "trainer": meta["trainer"],
        "trained_vocab_size": args.vocab_size,
        "pieces": len(pieces),
        "train_seconds": round(train_s, 2),
        "merge_seconds": round(merge_s, 2),
        "new_tokens": result.new_tokens,
        "skipped": dict(result.skipped),
        "reduction": ext.reduction,
        "speed_ratio": ext.speed_ratio,
        "timing_repeats": args.repeats,
        "targets": {"reduction": TARGET_REDUCTION, "speed_ratio": TARGET_SPEED, "max_new": MAX_NEW},
        "targets_met": {"reduction": ext.reduction >= TARGET_REDUCTION, "speed_ratio": ext.speed_ratio >= TARGET_SPEED,
                        "max_new": result.new_tokens <= MAX_NEW},
        "heldout": [r.__dict__ for r in rows],
        "english": [r.__dict__ for r in english_rows],
        "curve": curve,
        "model_check": model_check,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), "
                   f"Python {platform.python_version()}",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "vocab_extend.json").write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
    (out / "vocab_extend.md").write_text(_markdown(figures, rows, english_rows, curve))
    met = all(figures["targets_met"].values())
    print(f"\nreduction {ext.reduction:.1%} (target >= {TARGET_REDUCTION:.0%}), speed {ext.speed_ratio:.2f}x "
          f"(target >= {TARGET_SPEED}x), {result.new_tokens:,} new tokens: {'targets met' if met else 'TARGETS MISSED'}")


def _model_check(base, result, docs: list[str]) -> dict:
    """Loss per character (nats) of SmolLM2 before and after the resize: mean-initialised new rows vs random ones."""
    import tempfile

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ember.vocab import extend_vocab

    torch.set_num_threads(2)
    torch.manual_seed(0)
    characters = sum(len(d) for d in docs)

    def nats_per_char(path: str, randomise_new: bool = False) -> float:
        tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path).eval()
        if randomise_new:  # what a plain resize with the config's initialiser would start from
            weight = model.get_input_embeddings().weight
            with torch.no_grad():
                weight[result.base_size :] = torch.randn_like(weight[result.base_size :]) * model.config.initializer_range
        total = 0.0
        for doc in docs:
            ids = tok(doc, return_tensors="pt").input_ids
            with torch.no_grad():
                total += model(ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        return total / characters

    with tempfile.TemporaryDirectory() as tmp:
        pieces = [(result.space.to_bytes(s) or b"") for _, s in result.added]
        extend_vocab(base.source, pieces, tmp, max_new=len(pieces), progress=False)
        check = {
            "documents": len(docs),
            "characters": characters,
            "original": nats_per_char(base.path),
            "extended_mean_init": nats_per_char(tmp),
            "extended_random_init": nats_per_char(tmp, randomise_new=True),
        }
    print("\nloss per character (nats): " + ", ".join(f"{k} {v:.3f}" for k, v in check.items() if isinstance(v, float)))
    return check


def _markdown(f: dict, rows, english_rows, curve) -> str:
    from ember.vocab import format_table

    lines = [
        "# Chinese vocabulary extension of SmolLM2 (bench/vocab_extend.py)",
        "",
        f"Pieces: `tokenizers` BPE on the byte-level alphabet with SmolLM2's pre-tokenizer, trained on "
        f"{f['train_documents']:,} documents ({f['train_characters']:,} characters) in {f['train_seconds']} s. "
        f"Held out: {f['heldout_documents']:,} documents ({f['heldout_characters']:,} characters), every 10th "
        f"document of {', '.join(f['sources'])}.",
        "",
        f"**{f['new_tokens']:,} new tokens: {f['reduction']:.1%} fewer tokens (target >= 54%), "
        f"encode speed {f['speed_ratio']:.2f}x the original (target >= 0.8x).** Decoding round-trips exactly on the "
        "held-out text.",
        "",
        "Held-out Chinese:",
        "",
        "```",
        format_table(rows),
        "```",
        "",
        "English (every 10th C4 demo record): the extension leaves English alone.",
        "",
        "```",
        format_table(english_rows),
        "```",
        "",
        "Reduction by number of new tokens (highest-priority pieces first):",
        "",
        "| new tokens | held-out tokens | reduction |",
        "|---:|---:|---:|",
        *[f"| {c['max_new']:,} | {c['tokens']:,} | {c['reduction']:.1%} |" for c in curve],
        "",
        *_model_lines(f["model_check"]),
        f"Skipped pieces: {f['skipped']}. Speed: characters per CPU second of a single-threaded encode pass, best "
        f"of {f['timing_repeats']} passes with the tokenizers interleaved, on {f['machine']}; read as +-10%.",
        "",
    ]
    return "\n".join(lines)


def _model_lines(check) -> list[str]:
    if not check:
        return []
    return [
        f"Model side (SmolLM2 resized, before any training; loss per character in nats on {check['documents']} "
        f"held-out documents, {check['characters']:,} characters): original {check['original']:.3f}, new rows = "
        f"mean of their pieces {check['extended_mean_init']:.3f}, new rows random {check['extended_random_init']:.3f}.",
        "",
    ]


if __name__ == "__main__":
    main()
