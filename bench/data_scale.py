"""Bounded memory at scale: prepare N synthetic conversations (N = 100k, 300k, 1M) and measure peak RSS.

The conversations are drawn from the real sets in ../shared/data (ShareGPT-zh, MOSS, Alpaca-zh: a random real
conversation, its first 1-3 rounds, each message cut to 400 characters), so lengths and scripts are realistic while
the count grows. Each N runs `prepare_data` (the `ember train` data path: read → Arrow records → select → encode in
data.num_proc processes → Arrow samples) in a fresh process; the parent reads the child's peak RSS (ru_maxrss; the
encoding workers are reported separately by the same call) and the wall time, then times the cache hit (a second
run with the same key). The claim under test: peak RSS stays flat as N grows (under 4 GiB at 1M).

    python bench/data_scale.py [--sizes 100000,300000,1000000] [--out bench/results/data_scale.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import shared_data  # noqa: E402

CHILD = r"""
import json, resource, sys, time
from ember.config import EmberConfig, from_dict, validate
from ember.training.prepare import prepare_data
path, cache = sys.argv[1], sys.argv[2]
cfg = validate(from_dict(EmberConfig, {"stage": "sft", "data": {"datasets": [{"path": path}], "max_length": 1024,
                                                                    "cache_dir": cache, "on_error": "skip"}}, "bench"))
start = time.perf_counter()
prepared = prepare_data(cfg, progress=False)
seconds = time.perf_counter() - start
r = prepared.data.report
print(json.dumps({"seconds": seconds, "from_cache": prepared.from_cache, "samples": r.train_samples,
                  "tokens": r.total_tokens, "self_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "workers_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def real_conversations() -> list[list[dict]]:
    from ember.data.files import iter_records
    from ember.data.formats import convert, detect_format
    from ember.errors import DataError

    out = []
    for rel in ("sft/medicalgpt/sharegpt_zh_1K_format.jsonl", "sft/moss", "sft/llamafactory/alpaca_zh_demo.json"):
        fmt = None
        for source, record in iter_records(str(shared_data() / rel)):
            try:
                if isinstance(record, DataError):
                    continue
                fmt = fmt or detect_format(record)
                conv = convert(fmt, record, source, {})
            except DataError:
                continue
            out.append([{"role": m.role, "content": m.content} for m in conv.messages])
    return out


def synthesize(path: Path, n: int, pool: list[list[dict]], seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            messages = rng.choice(pool)
            system = [m for m in messages[:1] if m["role"] == "system"]
            body = messages[len(system):]
            rounds = rng.randint(1, 3)
            cut = body[: 2 * rounds]
            if not cut or cut[-1]["role"] != "assistant":
                cut = body[:2]
            keep = [{"role": m["role"], "content": m["content"][:400]} for m in system + cut]
            f.write(json.dumps({"messages": keep}, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100000,300000,1000000")
    parser.add_argument("--out")
    args = parser.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    pool = real_conversations()
    lines = [f"# data_scale — {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}",
             f"# {len(pool)} real conversations drawn from; max_length 1024, truncation split, num_proc default",
             "| conversations | file MB | samples | tokens | prepare s | conv/s | peak RSS main MB | peak RSS worker MB |"
             " cache hit s | load avg |", "|---|---|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory(prefix="ember-scale-") as tmp:
        for n in sizes:
            data = Path(tmp) / f"synthetic_{n}.jsonl"
            synthesize(data, n, pool)
            cache = Path(tmp) / f"cache_{n}"
            runs = []
            for _ in range(2):  # a miss, then a hit
                load = os.getloadavg()[0]
                done = subprocess.run([sys.executable, "-c", CHILD, str(data), str(cache)], capture_output=True,
                                      text=True, env={**os.environ, "EMBER_NO_PROGRESS": "1"}, cwd=ROOT)
                if done.returncode != 0:
                    sys.exit(done.stderr[-3000:])
                runs.append((json.loads(done.stdout.strip().splitlines()[-1]), load))
            (miss, load), (hit, _) = runs
            lines.append(f"| {n:,} | {data.stat().st_size / 1e6:.0f} | {miss['samples']:,} | {miss['tokens']:,} | "
                         f"{miss['seconds']:.0f} | {n / miss['seconds']:.0f} | {miss['self_rss_mb']:.0f} | "
                         f"{miss['workers_rss_mb']:.0f} | {hit['seconds']:.2f} | {load:.2f} |")
            print(lines[-1], flush=True)
            data.unlink()
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
