"""Benchmark: data-path throughput (read + convert + render + tokenize + label + truncate + store) with SmolLM2.

For three real sets from ../shared/data (or $EMBER_SHARED_DATA) — ShareGPT-zh (MedicalGPT, long multi-turn
Chinese), MOSS (7 files, multi-turn) and Alpaca-zh (single-turn) — it runs the `prepare_data` that `ember data`
and `ember train` use, cache off, with 1 and 2 encoding processes, then times a cache miss (process + write) and a
cache hit. Then the cost per token of long conversations: the same real rounds joined into 4-round and into
160-round conversations, encoded with no length limit (labelling only) and at max_length 1024 (split truncation).
Prints seconds and tokens/s with the load average: on a shared machine the load moves these numbers a lot.

    python bench/data_throughput.py                 # prints; add --out bench/results/data_throughput.txt to save
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import shared_data  # noqa: E402

SETS = {
    "sharegpt_zh": "sft/medicalgpt/sharegpt_zh_1K_format.jsonl",
    "moss": "sft/moss",
    "alpaca_zh": "sft/llamafactory/alpaca_zh_demo.json",
}


def config(path: Path, max_length: int, num_proc: int, cache_dir: str | None = None, truncation: str = "split"):
    from ember.config import EmberConfig, from_dict, validate

    data = {"datasets": [{"path": str(path)}], "max_length": max_length, "num_proc": num_proc, "on_error": "skip",
            "cache": cache_dir is not None, "cache_dir": cache_dir, "truncation": truncation}
    return validate(from_dict(EmberConfig, {"stage": "sft", "data": data}, "bench"))


def timed(fn, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return out, best


def joined_rounds(path: Path, rounds: int, total_rounds: int, out: Path) -> None:
    """Real user/assistant rounds from `path`, regrouped into conversations of `rounds` rounds each."""
    from ember.data.files import iter_records
    from ember.data.formats import convert, detect_format
    from ember.errors import DataError

    pairs: list[list[dict]] = []
    for source, record in iter_records(str(path)):
        try:
            if isinstance(record, DataError):
                continue
            conv = convert(detect_format(record), record, source, {})
        except DataError:
            continue
        msgs = [m for m in conv.messages if m.role in ("user", "assistant")]
        pairs += [[{"role": "user", "content": a.content}, {"role": "assistant", "content": b.content}]
                  for a, b in zip(msgs[::2], msgs[1::2]) if a.role == "user" and b.role == "assistant"]
    pairs = (pairs * (total_rounds // len(pairs) + 1))[:total_rounds]
    with open(out, "w", encoding="utf-8") as f:
        for i in range(0, total_rounds, rounds):
            messages = [m for pair in pairs[i: i + rounds] for m in pair]
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from ember.models.loading import resolve_source
    from ember.training.prepare import prepare_data

    base = shared_data()
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("smollm2-135m-instruct"))
    prepare = lambda cfg: prepare_data(cfg, tokenizer, progress=False)  # noqa: E731
    prepare(config(base / SETS["alpaca_zh"], 64, 1))  # warm imports and the template compile
    lines = [
        "# ember data throughput (read + convert + render + tokenize + label + truncate + store)",
        f"tokenizer: SmolLM2-135M-Instruct, its own chat template, max_length={args.max_length}, truncation=split, "
        f"mask=all_assistant; TOKENIZERS_PARALLELISM={os.environ.get('TOKENIZERS_PARALLELISM', 'unset (on)')}",
        f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average at start {os.getloadavg()[0]:.2f}",
        "",
        f"{'set':12s} {'records':>7s} {'samples':>7s} {'tokens':>9s} {'np=1 s':>7s} {'1 core':>7s} {'tokens/s':>9s} "
        f"{'np=2 s':>7s} {'tokens/s':>9s} {'np2/np1':>7s} {'/1 core':>7s} {'miss s':>7s} {'hit s':>6s} {'load':>5s}",
    ]
    print("\n".join(lines), flush=True)
    for name, rel in SETS.items():
        path = base / rel
        row = []
        for num_proc, threads in ((1, True), (1, False), (2, True)):
            # One process, the tokenizer's own thread pool off: the one-core figure the worker processes scale from
            # (the variable is read at each batch call; forked workers run their batches on one thread anyway).
            saved = os.environ.get("TOKENIZERS_PARALLELISM")
            if not threads:
                os.environ["TOKENIZERS_PARALLELISM"] = "false"
            try:
                prepared, seconds = timed(lambda: prepare(config(path, args.max_length, num_proc)), repeat=2)
            finally:
                if saved is None:
                    os.environ.pop("TOKENIZERS_PARALLELISM", None)
                else:
                    os.environ["TOKENIZERS_PARALLELISM"] = saved
            report = prepared.data.report
            row.append((seconds, report.total_tokens / seconds))
        with tempfile.TemporaryDirectory() as cache_dir:
            _, miss_s = timed(lambda: prepare(config(path, args.max_length, 2, cache_dir)))
            hit, hit_s = timed(lambda: prepare(config(path, args.max_length, 2, cache_dir)))
            assert hit.from_cache
        (s1, tps1), (s1_core, _), (s2, tps2) = row
        line = (f"{name:12s} {report.read:7d} {report.train_samples:7d} {report.total_tokens:9d} {s1:7.2f} "
                f"{s1_core:7.2f} {tps1:9.0f} {s2:7.2f} {tps2:9.0f} {s1 / s2:7.2f} {s1_core / s2:7.2f} {miss_s:7.2f} "
                f"{hit_s:6.2f} {os.getloadavg()[0]:5.2f}")
        print(line, flush=True)
        lines.append(line)

    lines += ["", "cost per token of long conversations (the same real sharegpt_zh rounds, 1,280 rounds in all):",
              f"{'rounds/conv':>11s} {'max_length':>10s} {'tokens':>9s} {'seconds':>8s} {'us/token':>9s} {'vs 4 rounds':>11s}"]
    print("\n".join(lines[-3:]), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for max_length in (1 << 20, args.max_length):
            per_token = {}
            for rounds in (4, 160):
                path = Path(tmp) / f"joined_{rounds}.jsonl"
                joined_rounds(base / SETS["sharegpt_zh"], rounds, 1280, path)
                prepared, seconds = timed(lambda: prepare(config(path, max_length, 1)), repeat=2)
                tokens = prepared.data.report.total_tokens
                per_token[rounds] = seconds / tokens * 1e6
                line = (f"{rounds:11d} {'none' if max_length > 1e5 else max_length:>10} {tokens:9d} {seconds:8.2f} "
                        f"{per_token[rounds]:9.2f} {per_token[rounds] / per_token[4]:11.2f}")
                print(line, flush=True)
                lines.append(line)
    footer = [
        "",
        "np=N s: the whole pipeline (cache off), best of 2, with N encoding processes; np=1 tokenises each batch on",
        "the tokenizer's own threads (both cores), '1 core' is np=1 with TOKENIZERS_PARALLELISM=false. np2/np1 and",
        "/1 core: the speed-up of 2 processes over each.",
        "miss s: process + write the cache; hit s: map the cache (includes hashing inputs and tokenizer for the key).",
        "At max_length 1024 with split, the 160-round conversations make several samples each (more tokens encoded",
        "than the conversation holds: each sample repeats the earlier rounds that fit as context).",
        f"load average at end {os.getloadavg()[0]:.2f}",
    ]
    print("\n".join(footer))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines + footer) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
