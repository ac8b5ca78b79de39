"""Benchmark: data-path throughput (read + convert + render + tokenize + label + truncate) with SmolLM2's tokenizer.

For three real sets from ../shared/data (or $EMBER_SHARED_DATA) — ShareGPT (MedicalGPT sharegpt_zh, long multi-turn
Chinese), MOSS (7 files, multi-turn) and Alpaca (alpaca_zh, single-turn) — it runs the same `prepare_data` that
`ember data` and `ember train` use, with the cache off, at num_proc 1 and 2, then times a cache miss (process + write)
and a cache hit. It prints samples/s and tokens/s (tokens = the ids of the kept samples). Measured, not asserted:
on a shared machine the load average (printed) moves these numbers a lot.

    python bench/data_throughput.py                 # prints; add --out bench/results/data_throughput.txt to save
"""

from __future__ import annotations

import argparse
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


def config(path: Path, max_length: int, num_proc: int, cache_dir: str | None = None):
    from ember.config import EmberConfig, from_dict, validate

    data = {
        "datasets": [{"path": str(path)}],
        "max_length": max_length,
        "num_proc": num_proc,
        "on_error": "skip",  # sharegpt_zh holds one record without an answer
        "cache": cache_dir is not None,
        "cache_dir": cache_dir,
    }
    return validate(from_dict(EmberConfig, {"stage": "sft", "data": data}, "bench"))


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--out", help="also write the report to this file")
    args = parser.parse_args()

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from transformers import AutoTokenizer

    from ember.training.prepare import prepare_data
    from ember.data.pipeline import load_records
    from ember.data.report import DataReport
    from ember.models.loading import resolve_source

    base = shared_data()
    tokenizer = AutoTokenizer.from_pretrained(resolve_source("smollm2-135m-instruct"))
    lines = [
        "# ember data throughput (read + convert + render + tokenize + label + truncate)",
        f"tokenizer: SmolLM2-135M-Instruct ({type(tokenizer).__name__}), template: its own chat template, "
        f"max_length={args.max_length}, truncation=turns, mask=all_assistant",
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"load average at start {os.getloadavg()[0]:.1f}",
        "",
        f"{'set':12s} {'records':>7s} {'kept':>6s} {'tokens':>9s} {'read s':>7s} "
        f"{'np=1 s':>7s} {'samples/s':>9s} {'tokens/s':>9s} {'np=2 s':>7s} {'samples/s':>9s} {'tokens/s':>9s} "
        f"{'miss s':>7s} {'hit s':>7s} {'no-cut s':>8s} {'samples/s':>9s}",
    ]
    print("\n".join(lines), flush=True)
    for name, rel in SETS.items():
        path = base / rel
        _, read_s = timed(lambda: load_records(config(path, args.max_length, 1).data, "sft", DataReport()))
        row = []
        for num_proc in (1, 2):
            prepared, seconds = timed(lambda: prepare_data(config(path, args.max_length, num_proc), tokenizer, progress=False))
            report = prepared.data.report
            row.append((seconds, report.kept / seconds, report.total_tokens / seconds))
        with tempfile.TemporaryDirectory() as cache_dir:
            _, miss_s = timed(lambda: prepare_data(config(path, args.max_length, 1, cache_dir), tokenizer, progress=False))
            hit, hit_s = timed(lambda: prepare_data(config(path, args.max_length, 1, cache_dir), tokenizer, progress=False))
            assert hit.from_cache
        # the same at a max_length nothing exceeds: what truncation (re-encoding shortened conversations) costs
        uncut, uncut_s = timed(lambda: prepare_data(config(path, 1 << 20, 1), tokenizer, progress=False))
        (s1, sps1, tps1), (s2, sps2, tps2) = row
        line = (f"{name:12s} {report.read:7d} {report.kept:6d} {report.total_tokens:9d} {read_s:7.2f} "
                f"{s1:7.2f} {sps1:9.0f} {tps1:9.0f} {s2:7.2f} {sps2:9.0f} {tps2:9.0f} {miss_s:7.2f} {hit_s:7.2f} "
                f"{uncut_s:8.2f} {uncut.data.report.kept / uncut_s:9.0f}")
        print(line, flush=True)
        lines.append(line)
    footer = [
        "",
        "read s: reading + converting only. np=N s: the whole pipeline (cache off) with N worker processes.",
        "miss s: process + write the cache; hit s: load from the cache (includes hashing inputs and tokenizer for the key).",
        "no-cut s: np=1 with a max_length no sample reaches (no truncation); kept samples then include the long ones.",
        f"load average at end {os.getloadavg()[0]:.1f}",
    ]
    print("\n".join(footer))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text("\n".join(lines + footer) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
