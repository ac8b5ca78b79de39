"""Answer tokens kept by `truncation: split` vs `truncation: turns` on real multi-turn sets, at 256 / 512 / 1024.

Counts, not timings: for each set and limit it prepares the data both ways (SmolLM2's tokenizer and template, the
`ember train` data path, cache off) and prints how many assistant-answer tokens are trained, out of how many the
conversations hold, with the tokens lost per reason. This is the measurement behind `split` being the SFT default.

    python bench/truncation_report.py [--out bench/results/truncation_report.md]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from common import shared_data  # noqa: E402

SETS = {
    "firefly (33 conv., 4-6 rounds)": "sft/firefly/dummy_data.jsonl",
    "sharegpt_zh (1000 conv., 8.8 rounds)": "sft/medicalgpt/sharegpt_zh_1K_format.jsonl",
    "moss (620 conv., 2-19 rounds)": "sft/moss",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    from ember.config import EmberConfig, from_dict, validate
    from ember.errors import DataError
    from ember.models.loading import load_tokenizer
    from ember.training.prepare import prepare_data

    tokenizer = load_tokenizer(from_dict(EmberConfig, {}, "bench").model)
    lines = ["| set | max_length | truncation | samples | answer tokens trained / held | kept | conversations dropped |"
             " tokens lost, by reason |", "|---|---|---|---|---|---|---|---|"]
    for name, rel in SETS.items():
        for max_length in (256, 512, 1024):
            for mode in ("turns", "split"):
                data = {"datasets": [{"path": str(shared_data() / rel)}], "max_length": max_length,
                        "truncation": mode, "on_error": "skip", "cache": False}
                cfg = validate(from_dict(EmberConfig, {"stage": "sft", "data": data}, "bench"))
                try:
                    report = prepare_data(cfg, tokenizer=tokenizer, progress=False).data.report
                except DataError as exc:  # nothing fits at all: the error carries the counts
                    lines.append(f"| {name} | {max_length} | {mode} | 0 | 0 | 0% | all | {exc.problem.split('(')[1].split(')')[0]} |")
                    continue
                kept = report.answer_tokens - sum(report.answer_tokens_lost.values())
                lost = ", ".join(f"{reason}: {n:,}" for reason, n in report.answer_tokens_lost.items() if n) or "-"
                lines.append(f"| {name} | {max_length} | {mode} | {report.train_samples:,} | {kept:,} / "
                             f"{report.answer_tokens:,} | {kept / report.answer_tokens:.1%} | {report.dropped_too_long} | {lost} |")
            print("\n".join(lines[-2:]), flush=True)
    text = "\n".join(lines) + "\n"
    if args.out:
        Path(args.out).write_text(text, encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
