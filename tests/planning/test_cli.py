"""`ember plan`: exit 0 when the run fits, 1 when it does not, 2 with one readable line for a bad config."""

from __future__ import annotations

import json

import pytest

from ember.cli import main
from tests.planning.conftest import TINY

CONFIG = f"""stage: sft
model: {{name_or_path: llama, random_init: true, dtype: float32, config_overrides: {json.dumps(TINY)}}}
data: {{datasets: [{{path: unused.jsonl}}], max_length: 16}}
method: {{type: lora, rank: 4}}
train: {{per_device_train_batch_size: 2, bf16: false}}
"""


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(CONFIG, encoding="utf-8")
    return str(path)


def test_fits_on_this_cpu(config, capsys):
    assert main(["plan", config]) == 0
    out = capsys.readouterr().out
    assert out.startswith("ember plan: llama (llama, 2 layers, hidden 64, vocab 320) on CPU")
    assert "fits on CPU" in out and "peak RSS per process above the interpreter and its libraries" in out


def test_json_and_overrides(config, capsys):
    assert main(["plan", config, "--json", "train.per_device_train_batch_size=4", "--gpus", "2",
                 "--gpu-memory", "80"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["fits"] is True and data["target"]["kind"] == "gpu" and data["target"]["devices"] == 2
    assert data["tokens_per_step"] == 4 * 16 * 2
    assert data["peak_bytes_per_device"] == sum(data["parts"].values())


def test_does_not_fit_exits_1_with_the_change_to_make(config, capsys):
    assert main(["plan", config, "train.per_device_train_batch_size=8", "--gpu-memory", "0.5004"]) == 1
    out = capsys.readouterr().out
    assert "does NOT fit on 1 × 0.5 GiB GPU" in out
    assert f"ember train {config} train.per_device_train_batch_size=" in out


@pytest.mark.parametrize("argv, message", [
    (["train.per_device_train_batch_sise=2"], "unknown key 'per_device_train_batch_sise'; did you mean 'per_device_train_batch_size'?"),
    (["--gpus", "0", "--gpu-memory", "80"], "--gpus 0: give at least 1"),
    (["--gpu-memory", "-1"], "--gpu-memory -1.0: give the memory of one GPU in GiB"),
    (["--gpu-memory", "nan"], "--gpu-memory nan: give the memory of one GPU in GiB"),
    (["--gpus", "1", "--gpu-memory", "inf"], "--gpu-memory inf: give the memory of one GPU in GiB"),
    (["model.random_init=false", "model.name_or_path=nobody/no-such-model"], "model.name_or_path=nobody/no-such-model: its config.json could not be read"),
    (["train.deepspeed=missing.json"], "train.deepspeed: missing.json is not a file"),
    (["model.config_overrides.hidden_sise=64"], "model.config_overrides.hidden_sise: LlamaConfig has no such field"),
])
def test_bad_configs_exit_2_with_one_line(config, capsys, argv, message):
    assert main(["plan", config, *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_gpus_on_a_machine_without_one_need_their_memory(config, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: --gpus reads its memory")
    assert main(["plan", config, "--gpus", "2"]) == 2
    assert "--gpus 2 on a machine without a GPU: also give the memory of one GPU, e.g. --gpu-memory 80" in capsys.readouterr().err


def test_train_prints_the_plan_first(tiny_run_config, capsys):
    from ember.training.run import train

    train(tiny_run_config("train.max_steps=1"))
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("plan: ") and "peak per process on CPU" in first and first.endswith("tokens per step")
