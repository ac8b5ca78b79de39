"""One run per output directory: a new run never mixes its files with an earlier run's.

A fresh run (not resuming) into a directory that holds an earlier run's checkpoints or finished weights needs
`output.overwrite=true`, and then starts by removing what that run wrote. Otherwise a run that fails after its first
write would leave its `ember_run.yaml` ("what ran") beside the earlier run's weights and template, and `ember chat`
would serve one run under the other's description. Files no run writes are left alone.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ember.core.artifacts import DATA_REPORT, METRICS, RUN_CONFIG, TEMPLATE_INFO, TRAINER_STATE
from ember.training import checkpoints

# Weights as `save_model` writes them (an adapter, or a full model, sharded or not), and the run's own records.
WEIGHTS = ("adapter_model.safetensors", "adapter_config.json", "model.safetensors", "model-*-of-*.safetensors",
           "model.safetensors.index.json", "pytorch_model*.bin")
RECORDS = (RUN_CONFIG, TEMPLATE_INFO, DATA_REPORT, METRICS, TRAINER_STATE, "training_args.bin", "loss.png")


def finished_weights(out: Path) -> list[str]:
    """Names of the weight files and final metrics an earlier run left in `out` (empty when there are none)."""
    if not out.is_dir():
        return []
    found = sorted({p.name for pattern in WEIGHTS for p in out.glob(pattern)})
    return found + ([METRICS] if (out / METRICS).is_file() else [])


def clear_previous_run(out: Path) -> list[str]:
    """Remove an earlier run's checkpoints, weights and records from `out`; returns the names removed."""
    if not out.is_dir():
        return []
    found = checkpoints.scan(out)
    doomed = [*found.complete, *(folder for folder, _ in found.partial if folder.parent == out)]
    doomed += sorted({p for pattern in (*WEIGHTS, *RECORDS) for p in out.glob(pattern) if p.is_file()})
    for path in doomed:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    checkpoints.clear_staging(out)
    return [p.name for p in doomed]
