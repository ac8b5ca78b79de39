"""Benchmark: bits per character of SmolLM2 on held-out Chinese text, before and after the vocabulary extension and
after a short continued-pretraining run (issue 6).

Bits per character = the model's total negative log-likelihood of the text, in bits, divided by the number of
characters. It does not depend on the tokenizer, so models with different vocabularies compare directly (a model
that needs fewer tokens per character must spend more bits on each of them).

Same corpus and split as bench/vocab_extend.py: every 10th document held out, the rest trains. The script runs the
real commands on that split, in order, and records them:
  1. `ember vocab train` + `ember vocab extend` on the training split (20,000 new tokens);
  2. `ember train examples/vocab-extend-pt.yaml` with dotted overrides: the extended model, the training split,
     a short budget (--steps x --batch blocks of --max-length tokens);
  3. the same run on the original SmolLM2 (same method, steps and block length), unless --no-base-pt;
then measures bits per character on a slice of the held-out documents (every --eval-every'th) for the original model,
the extended model before training, and the two trained ones (LoRA merged with `ember.export.merge.merge`).

    python bench/vocab_report.py                     # ~35 min on 2 shared CPU cores; writes bench/vocab_report.md
    python bench/vocab_report.py --reuse             # keep what runs/vocab-report already holds, re-measure
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import shared_data  # noqa: E402
from vocab_extend import BASE, MAX_NEW, SOURCES  # noqa: E402  (same corpus, base and budget)

WORK = Path("runs/vocab-report")  # relative to the repository root, where the commands run
EXAMPLE = "examples/vocab-extend-pt.yaml"
RESULTS = ROOT / "bench" / "results" / "vocab_report.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=120, help="optimizer steps of each continued-pretraining run")
    parser.add_argument("--batch", type=int, default=2, help="blocks per step")
    parser.add_argument("--max-length", type=int, default=256, help="tokens per block")
    parser.add_argument("--vocab-size", type=int, default=40_000, help="`ember vocab train --vocab-size`")
    parser.add_argument("--eval-every", type=int, default=10, help="measure every Nth held-out document")
    parser.add_argument("--no-base-pt", action="store_true", help="skip the control run on the original model")
    parser.add_argument("--reuse", action="store_true", help="skip the steps whose outputs already exist")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="extra dotted override for both training runs (repeatable)")
    parser.add_argument("--markdown-only", action="store_true",
                        help="rewrite bench/vocab_report.md from bench/results/vocab_report.json; run nothing")
    args = parser.parse_args()
    os.chdir(ROOT)
    if args.markdown_only:
        (ROOT / "bench" / "vocab_report.md").write_text(markdown(json.loads(RESULTS.read_text())))
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    from ember.vocab import read_corpus

    data = shared_data()
    per_source = [(s, read_corpus([data / s])) for s in SOURCES]
    docs = [(s, d) for s, texts in per_source for d in texts]
    assert [d for _, d in docs] == read_corpus([data / s for s in SOURCES])  # the order bench/vocab_extend.py sees
    train = [d for i, (_, d) in enumerate(docs) if i % 10]
    held = [(s, d) for i, (s, d) in enumerate(docs) if i % 10 == 0]
    measured = held[:: args.eval_every]
    WORK.mkdir(parents=True, exist_ok=True)
    train_file = WORK / "zh_train.jsonl"
    train_file.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in train), encoding="utf-8")
    print(f"train split: {len(train):,} documents, {sum(map(len, train)):,} characters -> {train_file}; measured: "
          f"{len(measured)} of {len(held)} held-out documents, {sum(len(d) for _, d in measured):,} characters")

    commands: list[dict] = []
    pieces, extended = WORK / "zh-pieces", WORK / "smollm2-zh"
    run(commands, ["vocab", "train", "--base", BASE, "--vocab-size", str(args.vocab_size), "--out", str(pieces),
                   "--corpus", str(train_file)], skip=args.reuse and (pieces / "pieces.jsonl").is_file())
    run(commands, ["vocab", "extend", "--base", BASE, "--pieces", str(pieces), "--max-new", str(MAX_NEW),
                   "--out", str(extended)], skip=args.reuse and (extended / "model.safetensors").is_file())

    budget = [f"data.max_length={args.max_length}", f"train.max_steps={args.steps}",
              f"train.per_device_train_batch_size={args.batch}", "train.gradient_accumulation_steps=1",
              "train.save_strategy=no", "train.report_to=none", "train.logging_steps=2", "output.overwrite=true",
              *args.override]
    data_override = f"data.datasets=[{{path: {train_file}, format: text}}]"
    runs = {"extended + CPT": (str(extended), WORK / "pt-extended")}
    if not args.no_base_pt:
        runs["original + CPT"] = (BASE, WORK / "pt-original")
    for model, out in runs.values():
        run(commands, ["train", EXAMPLE, f"model.name_or_path={model}", data_override, *budget, f"output.dir={out}"],
            skip=args.reuse and (out / "adapter_model.safetensors").is_file())

    texts = [d for _, d in measured]
    models = {"SmolLM2 (original)": BASE, f"extended, +{MAX_NEW:,} tokens, before training": str(extended)}
    models.update({name: str(out) for name, (_, out) in runs.items()})
    rows = []
    for name, path in models.items():
        print(f"measuring {name} ({path})", flush=True)
        rows.append({"model": name, "path": path, **measure(path, texts)})
        print(f"  {rows[-1]['bits_per_char']:.4f} bits/char, {rows[-1]['tokens']:,} tokens", flush=True)

    figures = {
        "base": BASE,
        "sources": SOURCES,
        "split": "every 10th document held out (as bench/vocab_extend.py); the rest trains pieces and models",
        "measured_documents": len(measured),
        "measured_characters": sum(len(d) for _, d in measured),
        "measured_by_source": {s: sum(len(d) for src, d in measured if src == s) for s in SOURCES},
        "train_documents": len(train),
        "train_characters": sum(map(len, train)),
        "eval_every": args.eval_every,
        "steps": args.steps, "batch": args.batch, "max_length": args.max_length,
        "commands": commands,
        "trained": {name: _train_summary(out) for name, (_, out) in runs.items()},
        "rows": rows,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs (shared), "
                   f"Python {platform.python_version()}",
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n")
    (ROOT / "bench" / "vocab_report.md").write_text(markdown(figures))
    print("\n" + table(rows))


def run(commands: list[dict], argv: list[str], skip: bool = False) -> None:
    """Run `ember ARGV` as its own process (as a user would), echoing and recording the command and its time."""
    shown = "ember " + " ".join(shlex.quote(a) for a in argv)
    if skip:  # --reuse: the output of an earlier run of this same command is there
        print(f"\n(reusing the output of) $ {shown}", flush=True)
        commands.append({"command": shown, "seconds": None})
        return
    print(f"\n$ {shown}", flush=True)
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "ember", *argv], check=True)
    commands.append({"command": shown, "seconds": round(time.perf_counter() - start, 1)})


def measure(path: str, texts: list[str]) -> dict:
    """Total NLL in bits of each text after the start token training uses (BOS, else EOS), over the characters."""
    import torch
    import torch.nn.functional as F
    from tqdm import tqdm

    from ember.export.merge import merge

    torch.set_num_threads(2)
    merged = merge(path)  # a LoRA run is folded into its base; a plain model loads as chat loads it (fp32)
    model, tok = merged.model.eval(), merged.tokenizer
    start = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
    nats, tokens, characters = 0.0, 0, 0
    for text in tqdm(texts, desc="bits/char", unit="doc"):
        ids = torch.tensor([[start, *tok(text, add_special_tokens=False).input_ids]])
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].float()
        nats += F.cross_entropy(logits, ids[0, 1:], reduction="sum").item()
        tokens += ids.shape[1] - 1
        characters += len(text)
    bits = nats / math.log(2)
    return {"bits_per_char": bits / characters, "bits_per_token": bits / tokens, "tokens": tokens,
            "tokens_per_char": tokens / characters, "characters": characters,
            "embedding_rows": model.get_input_embeddings().weight.shape[0], "tokenizer_size": len(tok)}


def _train_summary(out: Path) -> dict:
    state = json.loads((out / "trainer_state.json").read_text())
    report = json.loads((out / "data_report.json").read_text())
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    end = [h for h in state["log_history"] if "train_runtime" in h][-1]
    return {"steps": state["global_step"], "train_runtime_s": round(float(end["train_runtime"]), 1),
            "tokens_seen": end.get("num_input_tokens_seen"), "first_loss": losses[0], "last_loss": losses[-1],
            "losses": losses, "blocks_available": report.get("train_samples")}


def table(rows: list[dict]) -> str:
    ref = rows[0]["bits_per_char"]
    lines = ["| model | bits/char | vs original | tokens/char | bits/token | embedding rows |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['bits_per_char']:.3f} | {r['bits_per_char'] / ref - 1:+.1%} | "
                     f"{r['tokens_per_char']:.3f} | {r['bits_per_token']:.3f} | {r['embedding_rows']:,} |")
    return "\n".join(lines)


def reading(f: dict) -> list[str]:
    """What the numbers say, computed from them (the runs this is written for: rows original, extended, + CPT)."""
    by = {r["model"].split(",")[0]: r for r in f["rows"]}
    original, extended = by["SmolLM2 (original)"], by["extended"]
    tuned, control = by.get("extended + CPT"), by.get("original + CPT")
    if tuned is None:
        return []
    gap = extended["bits_per_char"] - original["bits_per_char"]
    recovered = (extended["bits_per_char"] - tuned["bits_per_char"]) / gap
    run = f["trained"]["extended + CPT"]
    tokens = run["tokens_seen"]
    epoch = tokens / (run["blocks_available"] * (f["max_length"] - 1))  # blocks overlap by one token
    fewer = original["tokens_per_char"] / extended["tokens_per_char"]
    lines = [
        "What this shows, and what it does not:",
        "",
        f"- **Before training, the extension costs {gap:.2f} bits per character** "
        f"({extended['bits_per_char'] / original['bits_per_char'] - 1:+.0%}). The model has never seen its new "
        "tokens: an input row that is the mean of its pieces' rows is a fair guess, but an output row that is a mean "
        "predicts the token poorly, and each new token now carries what 2-3 old tokens carried.",
        f"- **The short run recovers {recovered:.0%} of that gap but not the original quality**: "
        f"{tuned['bits_per_char']:.3f} bits/char after {f['steps']} steps ({tokens:,} tokens, {epoch:.0%} of one "
        f"epoch of the training split), still {tuned['bits_per_char'] / original['bits_per_char'] - 1:+.1%} against "
        "the untouched original. A run this short cannot teach 20,000 tokens; the recipe it follows "
        "(Firefly-LLaMA2-Chinese) is meant for long runs on large Chinese corpora.",
    ]
    if control is not None:
        change = control["bits_per_char"] / original["bits_per_char"] - 1
        lines.append(
            f"- **The fair comparison is the control row**: the same budget on the original tokenizer improves the "
            f"original to {control['bits_per_char']:.3f} bits/char ({change:+.1%}: "
            "the training split is the same kind of text as the held-out slice), so at equal compute the extended "
            f"model is {tuned['bits_per_char'] / control['bits_per_char'] - 1:+.1%} behind. What the extension buys "
            f"is {fewer:.2f}x fewer tokens per character, i.e. {fewer:.2f}x more Chinese text per training or "
            "generation step and per context window; whether that overtakes the original in quality needs a far "
            "longer run than this bench makes.")
    lines += ["- One seed and one run each; the step losses are noisy (batches of 2 blocks).", ""]
    return lines


def markdown(f: dict) -> str:
    trained = f["trained"]
    train_lines = [f"- {name}: {t['steps']} steps in {t['train_runtime_s']:.0f} s, {t['tokens_seen']:,} tokens seen "
                   f"(of {t['blocks_available']:,} blocks available), logged loss {t['first_loss']:.3f} -> "
                   f"{t['last_loss']:.3f} nats/token" for name, t in trained.items()]
    commands = [c["command"] + (f"    # {c['seconds']:.0f} s" if c["seconds"] is not None else "    # (reused)")
                for c in f["commands"]]
    return "\n".join([
        "# Bits per character on held-out Chinese: SmolLM2, extended, and after continued pretraining",
        "",
        "Written by `python bench/vocab_report.py` (figures also in `bench/results/vocab_report.json`).",
        "",
        f"Held-out text: {f['measured_documents']} documents, {f['measured_characters']:,} characters (every "
        f"{f['eval_every']}th held-out document of the split in bench/vocab_extend.py; by source: "
        + ", ".join(f"{s} {n:,}" for s, n in f["measured_by_source"].items()) + "). "
        f"Training split: {f['train_documents']:,} documents, {f['train_characters']:,} characters.",
        "",
        table(f["rows"]),
        "",
        *reading(f),
        "bits/char = total negative log-likelihood (base 2) of each document after the start token, divided by its "
        "characters; the softmax runs over every embedding row, padding rows included. Lower is better.",
        "",
        f"Continued pretraining: {f['steps']} steps x {f['batch']} blocks x {f['max_length']} tokens with "
        f"`{EXAMPLE}` (LoRA r16 + embed_tokens/lm_head in full):",
        "",
        *train_lines,
        "",
        "Commands run (in this order, from the repository root):",
        "",
        "```",
        *commands,
        "```",
        "",
        f"Machine: {f['machine']}.",
        "",
    ])


if __name__ == "__main__":
    main()
