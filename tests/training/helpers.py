"""Callbacks and readers the training tests share: they watch a real `ember.training.run.train` call from outside."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[2]


class GradCapture(TrainerCallback):
    """Keeps a copy of every gradient just before each optimizer step (after accumulation and clipping)."""

    def __init__(self):
        self.steps: list[dict[str, torch.Tensor]] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.steps.append({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})


class StopAfter(TrainerCallback):
    """Crashes the run (like a killed job) once `step` optimizer steps are done and saved."""

    class Interrupted(RuntimeError):
        pass

    def __init__(self, step: int):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise self.Interrupted(f"stopped before step {self.step + 1}")


def logged_losses(output_dir: Path) -> list[float]:
    state = json.loads((Path(output_dir) / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def saved_tensors(output_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    out = Path(output_dir)
    name = "adapter_model.safetensors" if (out / "adapter_model.safetensors").is_file() else "model.safetensors"
    return load_file(out / name)


def run_group(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess:
    """Run a launcher (torchrun, accelerate) in its own process group, so a timeout also ends its workers."""
    return wait_group(start_group(command, env), timeout)


def start_group(command: list[str], env: dict[str, str]) -> subprocess.Popen:
    """Started in the repository root, where the examples' relative paths (examples/deepspeed/*.json) resolve."""
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, cwd=ROOT)


def wait_group(proc: subprocess.Popen, timeout: float) -> subprocess.CompletedProcess:
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"{' '.join(proc.args[:4])} ... did not finish in {timeout} s:\n{stdout[-2000:]}\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def launch_env() -> dict[str, str]:
    """One thread per process (the machine has 2 cores), no progress bars."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "EMBER_NO_PROGRESS": "1"}


def torchrun(*args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", *args]


def accelerate_launch(*args: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", *args]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(cfg, path: Path) -> Path:
    """A validated `EmberConfig` as the YAML file a launcher's `ember train` reads."""
    from ember.config import to_dict

    path.write_text(yaml.safe_dump(to_dict(cfg), allow_unicode=True), encoding="utf-8")
    return path


def check_ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, done.stdout[-4000:] + "\n---- stderr ----\n" + done.stderr[-6000:]


def varlen_stand_in(calls: list):
    """A stand-in for a flash kernel's variable-length path (register it through transformers' AttentionInterface):
    causal SDPA between the boundaries handed over; each call's boundaries are appended to `calls`."""

    def attend(module, query, key, value, attention_mask, **kwargs):
        assert attention_mask is None
        bounds = kwargs["cu_seq_lens_q"].tolist()
        calls.append((bounds, kwargs["cu_seq_lens_k"].tolist(), kwargs["max_length_q"], kwargs["max_length_k"]))
        sdpa = torch.nn.functional.scaled_dot_product_attention
        parts = [sdpa(query[:, :, s:e], key[:, :, s:e], value[:, :, s:e], is_causal=True, enable_gqa=True)
                 for s, e in zip(bounds[:-1], bounds[1:])]
        return torch.cat(parts, dim=2).transpose(1, 2), None

    return attend
