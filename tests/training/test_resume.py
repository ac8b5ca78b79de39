"""A crashed run resumed with `train.resume_from_checkpoint: auto` ends exactly where an uninterrupted one does."""

from __future__ import annotations

import json

import pytest
import torch

from ember.errors import ConfigError
from ember.training.run import train

from .helpers import StopAfter, logged_losses, saved_tensors

# Cosine schedule with warmup, AdamW and LoRA dropout: the scheduler, optimizer and RNG states must all come back.
RUN = ("train.max_steps=4", "train.save_strategy=steps", "train.save_steps=2", "train.lr_scheduler_type=cosine",
       "train.warmup_steps=1", "method.dropout=0.1", "train.learning_rate=1e-2")


def test_resume_after_a_crash_matches_an_uninterrupted_run(tiny_run_config, tmp_path):
    straight = train(tiny_run_config(*RUN, f"output.dir={tmp_path / 'straight'}"))

    crashed = str(tmp_path / "crashed")
    with pytest.raises(StopAfter.Interrupted):
        train(tiny_run_config(*RUN, f"output.dir={crashed}"), callbacks=[StopAfter(step=2)])
    assert sorted(p.name for p in (tmp_path / "crashed").glob("checkpoint-*")) == ["checkpoint-2"]

    with pytest.raises(ConfigError, match="resume_from_checkpoint=auto"):
        train(tiny_run_config(*RUN, f"output.dir={crashed}"))  # checkpoints there: resume or overwrite, never mix

    resumed = train(tiny_run_config(*RUN, f"output.dir={crashed}", "train.resume_from_checkpoint=auto"))
    state = json.loads((resumed.output_dir / "trainer_state.json").read_text())
    assert state["global_step"] == 4
    assert [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2, 3, 4]  # steps continue from 3
    assert logged_losses(resumed.output_dir) == pytest.approx(logged_losses(straight.output_dir), rel=1e-5)

    expected, got = saved_tensors(straight.output_dir), saved_tensors(resumed.output_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-5, atol=1e-7)
    assert any(t.abs().sum() > 0 for n, t in got.items() if "lora_B" in n)


def test_resume_from_an_explicit_path_that_is_not_a_checkpoint_fails(tiny_run_config, tmp_path):
    with pytest.raises(ConfigError, match="not a checkpoint directory"):
        train(tiny_run_config(f"train.resume_from_checkpoint={tmp_path / 'missing'}"))
