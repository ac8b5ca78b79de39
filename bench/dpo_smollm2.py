"""DPO helps, measured: a short DPO run on the embedded SmolLM2-135M-Instruct (an SFT model) on Chinese preference
pairs, then the held-out reward accuracy / margin / loss and a pairwise comparison SFT vs SFT+DPO.

Data: MedicalGPT's dpo_zh_500.jsonl (../shared/data/dpo/medicalgpt; research-only licence: used here, never shipped).
The records are shuffled once (seed 0); the first 100 are held out (their pairs are the evaluation set and their
prompts the comparison prompts), the other 400 train. Rows longer than data.max_length lose their prompt first, and
pairs whose answers do not fit are dropped (counted in the data report).

The model under test is a LoRA adapter in the top 8 of 30 layers, trained one epoch; the reference is the base model
(the adapter disabled). Held-out metrics are evaluated before the first step (eval_on_start), in the middle and at the
end. `ember eval compare` then answers held-out prompts with both models (greedy) and lets the base model judge by
the likelihood of [[1]] / [[2]] / [[TIE]] (a weak judge: the mechanics, and a direction, not a verdict), in both
orders.

    python bench/dpo_smollm2.py              # ~10 min on 2 idle CPU cores; writes runs/bench-dpo/
    python bench/dpo_smollm2.py --record     # the same, and bench/results/dpo/{results.json,report.md}
    python bench/dpo_smollm2.py --tiny       # smoke test: 12 training pairs, 2 steps, 4 compare prompts
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, shared_data  # noqa: E402

MODEL = "smollm2-135m-instruct"
HELD_OUT = 100


def split(out: Path, tiny: bool) -> tuple[Path, Path, Path]:
    source = shared_data() / "dpo" / "medicalgpt" / "dpo_zh_500.jsonl"
    records = [json.loads(line) for line in source.read_text(encoding="utf-8").splitlines() if line.strip()]
    random.Random(0).shuffle(records)
    held, train = records[:HELD_OUT], records[HELD_OUT:]
    if tiny:
        held, train = held[:24], train[:40]
    out.mkdir(parents=True, exist_ok=True)
    paths = out / "train.jsonl", out / "heldout.jsonl", out / "compare_prompts.jsonl"
    for path, rows in zip(paths[:2], (train, held), strict=True):
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    # Comparison prompts: the held-out single-turn questions (the chosen answer as the reference).
    prompts = [{"prompt": r["conversations"][-1]["value"], "category": "medical", "reference": r["chosen"]}
               for r in held if len(r["conversations"]) == 1]
    paths[2].write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in prompts), encoding="utf-8")
    return paths


def dpo_config(out: Path, train_path: Path, held_path: Path, tiny: bool):
    from ember.config import load_config, validate

    overrides = [
        "stage=dpo", f"model.name_or_path={MODEL}",
        f"data.datasets=[{{path: '{train_path}'}}, {{path: '{held_path}', split: eval}}]",
        "data.max_length=256", "data.cache=false",
        "preference.beta=0.1",
        "method.type=lora", "method.rank=16", "method.alpha=32", "method.dropout=0.0", "method.lora_layers=8",
        "train.learning_rate=5e-4", "train.num_train_epochs=1", "train.per_device_train_batch_size=4",
        "train.per_device_eval_batch_size=8", "train.lr_scheduler_type=cosine", "train.warmup_steps=1",
        "train.logging_steps=2", "train.eval_strategy=steps", "train.eval_steps=8", "train.save_strategy=no",
        "train.report_to=none", "train.extra={eval_on_start: true}", "train.seed=42",
        f"output.dir={out / 'dpo'}", "output.overwrite=true",
    ]
    if tiny:
        overrides += ["train.max_steps=2", "train.eval_steps=1"]
    return validate(load_config(None, overrides))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="smoke test with a handful of pairs")
    parser.add_argument("--record", action="store_true", help="also write bench/results/dpo/")
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench-dpo"))
    parser.add_argument("--compare-limit", type=int, default=16, help="held-out prompts answered by both models")
    args = parser.parse_args()
    out = Path(args.out)
    train_path, held_path, prompts = split(out, args.tiny)

    from ember.training.run import train

    result = train(dpo_config(out, train_path, held_path, args.tiny))
    state = json.loads((result.output_dir / "trainer_state.json").read_text())
    evals = [{k: round(v, 4) for k, v in h.items() if k.startswith("eval_") and "runtime" not in k
              and "per_second" not in k} | {"step": h["step"]} for h in state["log_history"] if "eval_loss" in h]
    logs = [{k: round(v, 4) for k, v in h.items() if k in ("step", "loss", "rewards/accuracies", "rewards/margins")}
            for h in state["log_history"] if "loss" in h and "eval_loss" not in h]
    final = {k: round(v, 4) for k, v in result.metrics.items() if k.startswith("eval_") and "runtime" not in k
             and "per_second" not in k}
    if final and (not evals or evals[-1]["step"] != state["global_step"]):
        evals.append(final | {"step": state["global_step"]})
    report = json.loads((result.output_dir / "data_report.json").read_text())

    limit = 4 if args.tiny else args.compare_limit
    compare = out / "compare"
    command = [sys.executable, "-m", "ember", "eval", "compare", "--model-a", str(result.output_dir), "--model-b",
               MODEL, "--prompts", str(prompts), "--judge", MODEL, "--judge-mode", "likelihood", "--limit", str(limit),
               "--max-new-tokens", "24" if args.tiny else "96", "--label", "sft+dpo-vs-sft", "--out", str(compare),
               "--no-progress"]
    subprocess.run(command, check=True, cwd=ROOT)
    scores = json.loads((compare / "scores.json").read_text())

    summary = {
        "model": MODEL, "data": "MedicalGPT dpo_zh_500.jsonl (shuffled, seed 0): 400 train / 100 held-out records",
        "pairs": {"train": report["train_samples"], "held_out": report["eval_samples"],
                  "dropped_too_long": report["dropped_too_long"], "prompts_truncated": report["truncated"]},
        "settings": "LoRA r16 in the top 8 layers, beta 0.1, lr 5e-4 cosine, batch 4, 1 epoch, max_length 256",
        "held_out": evals, "train_log": logs, "compare": scores,
    }
    (out / "results.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    print(json.dumps({"held_out": evals, "compare": scores.get("outcomes", scores)}, indent=2, ensure_ascii=False))
    if args.record and not args.tiny:
        dest = ROOT / "bench" / "results" / "dpo"
        dest.mkdir(parents=True, exist_ok=True)
        (dest / "results.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        for name, target in (("pairwise.md", "compare.md"), ("scores.json", "compare_scores.json"),
                             ("judgements.jsonl", "compare_judgements.jsonl")):
            if (compare / name).is_file():
                (dest / target).write_text((compare / name).read_text(encoding="utf-8"), encoding="utf-8")


if __name__ == "__main__":
    main()
