"""`torchrun --nproc_per_node 2 -m ember train` on CPU (gloo) trains like one process with the same global batch."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
import yaml

from ember.config import to_dict
from ember.training.run import train

from .helpers import logged_losses, run_group, saved_tensors

pytestmark = pytest.mark.slow


def test_two_process_ddp_matches_one_process(tiny_run_config, tmp_path):
    # full fine-tuning, so every weight is compared; no dropout, so the ranks' RNG streams cannot matter
    common = ("method.type=full", "train.max_steps=3", "train.learning_rate=1e-3", "train.save_strategy=steps",
              "train.save_steps=3", "train.report_to=tensorboard")
    ddp_cfg = tiny_run_config(*common, "train.per_device_train_batch_size=2", f"output.dir={tmp_path / 'ddp'}")
    path = tmp_path / "ddp.yaml"
    path.write_text(yaml.safe_dump(to_dict(ddp_cfg), allow_unicode=True), encoding="utf-8")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "EMBER_NO_PROGRESS": "1"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "ember", "train", str(path)]
    done = run_group(command, env, timeout=240)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]  # torchrun: every rank exited 0

    out = tmp_path / "ddp"
    # Rank 0 alone prints and writes: one config print, one set of outputs, one event file.
    assert done.stdout.count("resolved config:") == 1 and done.stdout.count("saved to ") == 1
    assert len(list(out.rglob("events.out.tfevents.*"))) == 1
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-3"]
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 3

    # One process, 2 × 2 accumulated = the same global batch of 4, the same samples in the same steps.
    single = train(tiny_run_config(*common, "train.per_device_train_batch_size=2",
                                   "train.gradient_accumulation_steps=2", f"output.dir={tmp_path / 'single'}"))
    assert logged_losses(out) == pytest.approx(logged_losses(single.output_dir), abs=1e-4)
    ddp_weights, single_weights = saved_tensors(out), saved_tensors(single.output_dir)
    for name, tensor in single_weights.items():
        torch.testing.assert_close(ddp_weights[name], tensor, rtol=1e-4, atol=1e-6)

