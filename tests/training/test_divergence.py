"""Bad numbers never pass silently: non-finite loss weights are bad data, absurd hyper-parameters are config errors,
and a run whose loss or gradients go non-finite, jump or collapse stops with a message, keeps its last checkpoint and
exits non-zero (or, with `train.on_nonfinite: skip_step`, drops exactly that step's update)."""

from __future__ import annotations

import json
import math
import re

import pytest
import torch
import yaml
from transformers import TrainerCallback

from ember.config import to_dict
from ember.errors import ConfigError, DataError, TrainingStopped
from ember.training import checkpoints
from ember.training.guard import DivergenceGuard
from ember.training.run import train

from .test_config_errors import _config, nothing_loads  # noqa: F401 (a fixture)

CHECKPOINTS = ("train.save_strategy=steps", "train.save_steps=1", "train.save_total_limit=1")


def write_dialogues(path, weights: dict[int, float]) -> None:
    """The eight tiny dialogues; the last answer of dialogue `i` (the one truncation keeps) gets weight `weights[i]`."""
    from conftest import tiny_dialogues

    rows = tiny_dialogues()
    for i, weight in weights.items():
        rows[i]["messages"][-1]["weight"] = weight
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


@pytest.mark.parametrize("weight", [math.nan, math.inf])
def test_a_non_finite_loss_weight_is_a_data_error_with_file_and_line(tiny_run_config, tmp_path, weight):
    data = tmp_path / "weights.jsonl"
    write_dialogues(data, {2: weight})  # the third record: user, assistant, user, assistant
    assert ("NaN" if math.isnan(weight) else "Infinity") in data.read_text().splitlines()[2]
    with pytest.raises(DataError) as caught:
        train(tiny_run_config(f"data.datasets=[{{path: {data}}}]"))
    assert str(caught.value) == (f"{data}:3: field 'messages[3].weight': loss weight must be a finite number >= 0, "
                                 f"got {weight}")


@pytest.mark.parametrize("overrides, message", [
    (["train.learning_rate=-1"], r"train.learning_rate=-1.0 must be a positive number \(fine-tuning uses 1e-5 to 1e-3\)"),
    (["train.learning_rate=0"], "train.learning_rate=0.0 must be a positive number"),
    (["train.learning_rate=.nan"], "train.learning_rate=nan must be a positive number"),
    (["train.per_device_train_batch_size=0"], "train.per_device_train_batch_size=0 must be >= 1"),
    (["train.per_device_eval_batch_size=-2"], "train.per_device_eval_batch_size=-2 must be >= 1"),
    (["train.gradient_accumulation_steps=0"], "train.gradient_accumulation_steps=0 must be >= 1"),
    (["train.max_steps=0"], "train.max_steps=0 must be > 0, or -1 to train train.num_train_epochs"),
    (["train.max_steps=-1", "train.num_train_epochs=0"], r"train.num_train_epochs=0.0 must be > 0 \(or set train.max_steps\)"),
    (["train.warmup_ratio=1.5"], r"train.warmup_ratio=1.5 must be in \[0, 1\)"),
    (["train.warmup_steps=-3"], "train.warmup_steps=-3 must be >= 0"),
    (["train.weight_decay=-0.1"], "train.weight_decay=-0.1 must be a finite number >= 0"),
    (["train.max_grad_norm=.inf"], "train.max_grad_norm=inf must be a finite number >= 0"),
    (["train.save_strategy=steps", "train.save_steps=0"], "train.save_steps=0 must be >= 1"),
    (["train.save_total_limit=0"], "train.save_total_limit=0 must be >= 1, or null to keep every checkpoint"),
    (["train.logging_steps=0"], "train.logging_steps=0 must be >= 1"),
    (["train.loss_spike_factor=0.5"], "train.loss_spike_factor=0.5 must be a number > 1, or null"),
    (["train.on_nonfinite=skip"], r"'skip' is not one of stop, skip_step \(did you mean 'skip_step'"),
    (["train.on_nonfinite=skip_step", "train.deepspeed=examples/deepspeed/zero2.json"],
     "train.on_nonfinite=skip_step cannot drop a step under DeepSpeed"),
])
def test_hyper_parameters_no_run_can_use_fail_before_loading(tiny_run_config, nothing_loads, overrides, message):  # noqa: F811
    with pytest.raises(ConfigError, match=message):
        train(_config(tiny_run_config, overrides))


def test_learning_rate_1e6_collapses_the_model_and_is_stopped_with_exit_3(tiny_run_config, tmp_path, capsys):
    from ember.cli import main

    out = tmp_path / "run"
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(to_dict(tiny_run_config(*CHECKPOINTS, "train.max_steps=6"))), encoding="utf-8")
    assert main(["train", str(path), "train.learning_rate=1e6"]) == 3
    printed = capsys.readouterr()
    assert ("warning: train.learning_rate=1e+06 is far above what fine-tuning uses (1e-5 to 1e-3): expect the run "
            "to diverge") in printed.out
    # Step 1's update (Adam: about lr per weight) wrecks the model: uniform output, loss ln|V|, and from step 3 on
    # no gradient at all; transformers alone would train on to step 6 and exit 0.
    (error,) = [line for line in printed.err.splitlines() if line.startswith("error: ")]
    assert error.startswith("error: training stopped at step 3: the gradient is exactly 0 while the loss is 10.8: "
                            "the model's output no longer depends on its weights (it has collapsed). Nothing after it "
                            f"was saved. The newest complete checkpoint, {out / 'checkpoint-2'}, is kept")
    assert error.endswith("To fix: lower train.learning_rate (now 1e+06) or look at the data of that step; "
                          "train.loss_spike_factor=null turns this check off")
    assert "Traceback" not in printed.err
    assert [p.name for p in checkpoints.scan(out).complete] == ["checkpoint-2"] and not checkpoints.scan(out).partial
    assert not (out / "adapter_model.safetensors").exists()  # no final weights from a diverged run


class LoggedSteps(TrainerCallback):
    """Each optimizer step's logged values (loss, dropped_steps), as the log line shows them."""

    def __init__(self):
        self.steps: dict[int, dict] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.steps[state.global_step] = dict(logs)


@pytest.fixture
def heavy_steps(monkeypatch) -> list[int]:
    """The optimizer steps whose batch holds a token with loss weight > 1 (where a weighted record lands)."""
    from ember.training.trainer import EmberTrainer

    steps: list[int] = []
    real = EmberTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        weights = inputs.get("loss_weights")
        if model.training and weights is not None and weights.max() > 1:
            steps.append(self.state.global_step + 1)
        return real(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(EmberTrainer, "compute_loss", recording)
    return steps


def test_a_loss_spike_stops_the_run_and_keeps_the_checkpoint_before_it(tiny_run_config, tmp_path, heavy_steps):
    data = tmp_path / "heavy.jsonl"
    write_dialogues(data, {5: 40.0})  # one answer weighs 40x: the loss of its step jumps far above the others
    out = tmp_path / "run"
    logged = LoggedSteps()
    with pytest.raises(TrainingStopped) as caught:
        train(tiny_run_config(f"data.datasets=[{{path: {data}}}]", *CHECKPOINTS, "train.max_steps=8"),
              callbacks=[logged])
    step = heavy_steps[0]
    assert step > 1 and heavy_steps == [step]  # stopped at the first heavy step: nothing ran after it
    message = str(caught.value)
    assert message.startswith(f"training stopped at step {step}: the loss jumped to ")
    assert re.search(rf"x its running level 10\.\d+ \(median of the last {step - 1} steps; train.loss_spike_factor=3\)\. "
                     "Nothing after it was saved. The newest complete checkpoint, .*, is kept", message)
    assert f"checkpoint, {out / f'checkpoint-{step - 1}'}, is kept" in message
    assert [p.name for p in checkpoints.scan(out).complete] == [f"checkpoint-{step - 1}"]
    # its update was dropped, and its loss is logged as it was (only a non-finite one is logged as nan)
    jumped = float(re.search(r"the loss jumped to ([0-9.]+),", message).group(1))
    assert logged.steps[step]["dropped_steps"] == 1 and logged.steps[step]["loss"] == pytest.approx(jumped, rel=1e-3)
    assert all("dropped_steps" not in logs for s, logs in logged.steps.items() if s != step)


class WeightSnapshots(TrainerCallback):
    """The trainable weights before training and after every optimizer step."""

    def __init__(self):
        self.after: list[dict[str, torch.Tensor]] = []

    def _take(self, model):
        self.after.append({n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._take(model)

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self._take(model)


def test_skip_step_drops_exactly_the_non_finite_step(tiny_run_config, tmp_path, capsys, heavy_steps):
    data = tmp_path / "overflow.jsonl"
    write_dialogues(data, {5: 1e38})  # finite, but weight x loss overflows float32: that step's loss is inf
    run = (f"data.datasets=[{{path: {data}}}]", "train.max_steps=4")  # one epoch: the record comes once

    with pytest.raises(TrainingStopped) as caught:
        train(tiny_run_config(*run, f"output.dir={tmp_path / 'stop'}"))
    bad = heavy_steps[0]
    assert str(caught.value).startswith(f"training stopped at step {bad}: the loss is inf. Nothing after it was saved.")
    assert str(caught.value).endswith("train.on_nonfinite=skip_step drops such steps instead of stopping")

    heavy_steps.clear()
    snapshots = WeightSnapshots()
    result = train(tiny_run_config(*run, "train.on_nonfinite=skip_step"), callbacks=[snapshots])
    assert result.metrics["skipped_steps"] == heavy_steps == [bad]
    assert f"step {bad}: the loss is inf; skipped this optimizer step" in capsys.readouterr().out
    weights = snapshots.after
    assert len(weights) == 5  # before training, then after steps 1-4
    for step in range(1, 5):
        same = all(torch.equal(weights[step][n], weights[step - 1][n]) for n in weights[step])
        assert same == (step == bad), step  # the bad step changed nothing; every other step moved the adapter
    assert all(torch.isfinite(t).all() for t in weights[4].values())
    assert math.isfinite(result.metrics["train_loss"])
    logged = {h["step"]: h for h in json.loads((result.output_dir / "trainer_state.json").read_text())["log_history"]
              if "loss" in h}
    assert math.isnan(logged[bad]["loss"]) and logged[bad]["dropped_steps"] == 1  # not the 0 transformers would show
    assert all(math.isfinite(h["loss"]) and "dropped_steps" not in h for step, h in logged.items() if step != bad)


def test_the_guard_judges_jumps_against_the_median_of_recent_steps():
    guard = DivergenceGuard(spike_factor=3.0)
    assert guard.judge(10.0, 1.0) == (None, False)  # no history yet: nothing to compare with
    guard.recent.extend([1.0, 1.2, 0.8, 9.0])  # median 1.1: one earlier outlier does not move the level
    assert guard.judge(3.2, 1.0) == (None, False)  # 2.9x
    assert guard.judge(3.4, 1.0)[0].startswith("the loss jumped to 3.4, 3.1x its running level 1.1")
    guard.recent.clear()
    guard.recent.extend([0.05, 0.05])
    assert guard.judge(0.9, 1.0) == (None, False)  # 18x, but less than 1 nat above a tiny loss
    assert guard.judge(1.5, 1.0)[0].startswith("the loss jumped to 1.5")
    assert guard.judge(2.0, 0.0)[0].startswith("the gradient is exactly 0 while the loss is 2")
    assert guard.judge(0.0, 0.0) == (None, False)
    assert guard.judge(math.nan, 1.0) == ("the loss is nan", True)
    assert guard.judge(2.0, math.inf) == ("the gradient norm is inf (loss 2)", True)
    off = DivergenceGuard(spike_factor=None)
    off.recent.extend([0.05, 0.05])
    assert off.judge(50.0, 0.0) == (None, False) and off.judge(math.inf, None) == ("the loss is inf", True)


def test_the_guard_measures_fsdp2_sharded_gradients(tmp_path):
    """FSDP2 keeps gradients as DTensors (seen on a GPU: `.tolist()` of their norm failed); the guard takes the
    global norm of the shards. One gloo process with a one-device mesh, on the CPU."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Shard, distribute_tensor

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        mesh = init_device_mesh("cpu", (1,))
        layer = torch.nn.Linear(4, 3)
        grad = torch.tensor([[3.0, 0, 0, 0], [0, 4.0, 0, 0], [0, 0, 0, 0]])
        layer.weight.grad = distribute_tensor(grad, mesh, [Shard(0)])
        guard = DivergenceGuard()
        guard.add_loss(torch.tensor(2.5))
        loss, norm = guard._measure(layer)
        assert (loss, norm) == (2.5, 5.0)
    finally:
        dist.destroy_process_group()
