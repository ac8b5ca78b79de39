"""Bounded memory at scale: prepare N synthetic conversations (N = 100k, 300k, 1M) and measure peak RSS.

The conversations are drawn from the real sets in ../shared/data (ShareGPT-zh, MOSS, Alpaca-zh: a random real
conversation, its first 1-3 rounds, each message cut to 400 characters), so lengths and scripts are realistic while
the count grows. Each N runs `prepare_data` (the `ember train` data path: read → Arrow records → select → encode in
data.num_proc processes → Arrow samples) in a fresh process; the parent reads the child's peak RSS (ru_maxrss; the
encoding workers are reported separately by the same call) and the wall time, then times the cache hit (a second
run with the same key) and a third run (by then the input's digest is remembered: the file had settled when the second
run hashed it, see ember.core.paths.file_digest). The claim under test: peak RSS stays flat as N grows (under 4 GiB at 1M).

ru_maxrss counts every resident page, also clean file-backed pages of the memory-mapped Arrow files, which the kernel
drops under pressure without writing anything. So the parent also samples /proc/<pid>/status of the child ("main")
and of its descendants ("workers") every 0.2 s and reports the peak RssAnon (memory the process allocated: heap,
Python objects, Arrow buffers; what pressure cannot reclaim without swap) and the peak RssFile (file pages mapped
and resident) of each role. A forked worker's RssAnon includes the pages it still shares copy-on-write with the
main process, so summing RssAnon would count those twice; the memory all processes together hold is the peak of
their Pss_Anon (/proc/<pid>/smaps_rollup: a shared page split between its sharers) summed at one instant.

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
import threading
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


class RssSampler(threading.Thread):
    """Peak RssAnon and RssFile (MB) of process `pid` ("main") and of its descendants ("workers"), read from
    /proc every `every` seconds until `stop()`. A peak shorter than `every` can be missed; ru_maxrss cannot."""

    ROLES = ("main", "workers")

    def __init__(self, pid: int, every: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak = {role: {"anon": 0.0, "file": 0.0} for role in self.ROLES}
        self.total_anon = 0.0  # Pss_Anon summed over main and workers, at one instant
        self.workers_seen: set[int] = set()
        self.samples = 0
        self._done = threading.Event()

    @staticmethod
    def _parents() -> dict[int, list[int]]:
        children: dict[int, list[int]] = {}
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:  # exited while we looked
                continue
            ppid = int(stat[stat.rindex(")") + 2:].split()[1])  # the name in parentheses may hold spaces
            children.setdefault(ppid, []).append(int(entry.name))
        return children

    @staticmethod
    def _rss(pid: int) -> tuple[float, float] | None:
        try:
            lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        except OSError:
            return None
        kb = {k: int(v.split()[0]) for k, _, v in (line.partition(":") for line in lines) if k in ("RssAnon", "RssFile")}
        return (kb["RssAnon"] / 1024, kb["RssFile"] / 1024) if len(kb) == 2 else None

    @staticmethod
    def _pss_anon(pid: int) -> float:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def sample(self) -> None:
        children = self._parents()
        workers, todo = [], list(children.get(self.pid, []))
        while todo:
            pid = todo.pop()
            workers.append(pid)
            todo.extend(children.get(pid, []))
        total = 0.0
        for role, pid in [("main", self.pid)] + [("workers", w) for w in workers]:
            rss = self._rss(pid)
            if rss is None:
                continue
            if role == "workers":
                self.workers_seen.add(pid)
            peak = self.peak[role]
            peak["anon"], peak["file"] = max(peak["anon"], rss[0]), max(peak["file"], rss[1])
            total += self._pss_anon(pid)
        self.total_anon = max(self.total_anon, total)
        self.samples += 1

    def run(self) -> None:
        while True:
            self.sample()
            if self._done.wait(self.every):
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


def run_child(data: Path, cache: Path) -> tuple[dict, RssSampler]:
    """One `prepare_data` in a fresh process: its own report (seconds, counts, ru_maxrss) and the /proc samples."""
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(data), str(cache)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env={**os.environ, "EMBER_NO_PROGRESS": "1"}, cwd=ROOT)
    sampler = RssSampler(child.pid)
    sampler.start()
    out, err = child.communicate()
    sampler.stop()
    if child.returncode != 0:
        sys.exit(err[-3000:])
    return json.loads(out.strip().splitlines()[-1]), sampler


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
             "# ru_maxrss = peak resident pages of any kind (kernel's count); RssAnon / RssFile = peaks sampled from "
             "/proc every 0.2 s (worker: the largest of any worker)",
             "| conversations | file MB | samples | tokens | prepare s | conv/s | ru_maxrss main MB | ru_maxrss worker MB"
             " | RssAnon main MB | RssFile main MB | RssAnon worker MB | RssFile worker MB | Pss_Anon all MB | workers"
             " | cache hit s | hit again s | load avg |", "|" + "---|" * 17]
    with tempfile.TemporaryDirectory(prefix="ember-scale-") as tmp:
        for n in sizes:
            data = Path(tmp) / f"synthetic_{n}.jsonl"
            synthesize(data, n, pool)
            cache = Path(tmp) / f"cache_{n}"
            load = os.getloadavg()[0]
            miss, rss = run_child(data, cache)
            hit, _ = run_child(data, cache)  # same key: the cache hit
            # and once more: the input's digest is remembered once the file has settled (ember.core.paths)
            again, _ = run_child(data, cache)
            if not (hit["from_cache"] and again["from_cache"]):
                sys.exit("a later run did not hit the cache")
            main_, work = rss.peak["main"], rss.peak["workers"]
            lines.append(f"| {n:,} | {data.stat().st_size / 1e6:.0f} | {miss['samples']:,} | {miss['tokens']:,} | "
                         f"{miss['seconds']:.0f} | {n / miss['seconds']:.0f} | {miss['self_rss_mb']:.0f} | "
                         f"{miss['workers_rss_mb']:.0f} | {main_['anon']:.0f} | {main_['file']:.0f} | "
                         f"{work['anon']:.0f} | {work['file']:.0f} | {rss.total_anon:.0f} | {len(rss.workers_seen)} | "
                         f"{hit['seconds']:.2f} | {again['seconds']:.2f} | {load:.2f} |")
            print(lines[-1], flush=True)
            data.unlink()
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
