"""kill -9 at each step of a checkpoint save; `resume_from_checkpoint: auto` then ends bit-exactly where an
uninterrupted run does (losses, batch order, weights), with packing, gradient accumulation and an epoch boundary.

The kill comes from inside the child process at a named point of the save, not from a timer: an audit hook
(`sys.addaudithook`) sees every file the save opens for writing, every rename and every deletion, and sends SIGKILL
to its own process when the named one is about to happen.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import pytest
import torch

from ember.config import to_dict
from ember.training import checkpoints
from ember.training.run import resolve_resume, train

from .helpers import logged_losses, saved_tensors


# 8 packed micro-batches of 1 dialogue per epoch, GA 2: 4 optimizer steps per epoch, 8 steps in all. Checkpoints at
# steps 3 and 6 (each mid-epoch), save_total_limit 1; the child is killed while saving checkpoint-6. Resuming from
# checkpoint-3 crosses the epoch boundary at step 4. Dropout, warmup + cosine: RNG, scheduler and optimizer states
# must all come back.
RUN = ("data.packing=true", "train.per_device_train_batch_size=1", "train.gradient_accumulation_steps=2",
       "train.max_steps=8", "train.save_strategy=steps", "train.save_steps=3", "train.save_total_limit=1",
       "train.lr_scheduler_type=cosine", "train.warmup_steps=1", "method.dropout=0.1", "train.learning_rate=1e-2")

def train_in_child(raw: dict, event: str, name: str, threads: int, log: str, action: str) -> None:
    """In a child process: `ember train`, and when the save of checkpoint-6 reaches `event` `name`, either SIGKILL
    this process (`kill`) or make every later write of more than 64 kB fail as on a full disk (`full`)."""
    import resource

    import torch

    from ember.cli import main
    from ember.config import dump_yaml, from_dict
    from ember.config.schema import EmberConfig

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1), os.dup2(fd, 2)
    os.environ["EMBER_NO_PROGRESS"] = "1"
    # As many threads as the test process: the same reduction order, so the same bits.
    torch.set_num_threads(threads)
    config = Path(log).with_suffix(".yaml")
    config.write_text(dump_yaml(from_dict(EmberConfig, raw, "child")), encoding="utf-8")

    def at_point(ev, args):
        if ev != event:
            return
        if ev == "open":  # a file of the checkpoint-6 save opened for writing
            hit = isinstance(args[1], str) and "w" in args[1] and "checkpoint-6" in str(args[0]) and Path(args[0]).name == name
        elif ev == "os.rename":
            hit = Path(args[1]).name == name
        elif ev == "shutil.rmtree":  # e.g. the save clearing its staging folder before it writes
            hit = Path(args[0]).name == name
        else:  # os.remove: rotation deleting a file of an old checkpoint (named relative to the folder's descriptor)
            hit = str(args[0]) == name
        if hit and action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif hit:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (64 << 10, resource.RLIM_INFINITY))

    sys.addaudithook(at_point)
    sys.exit(main(["train", str(config)]))


def run_child(raw: dict, event: str, name: str, log: Path, action: str = "kill") -> int:
    """Exit code of `train_in_child` in a process forked from a server that has imported torch and transformers
    once (and never computed anything, so forking it is safe): each case costs its run, not the imports."""
    import multiprocessing

    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["ember.cli", "ember.training.run", "ember.training.trainer", __name__])
    child = ctx.Process(target=train_in_child, args=(raw, event, name, torch.get_num_threads(), str(log), action))
    child.start()
    child.join(timeout=300)
    if child.exitcode is None:
        child.kill()
        child.join()
    return child.exitcode


# (audit event, file or folder name, the newest complete checkpoint left, resume and compare every bit?)
KILL_POINTS = [
    ("open", "adapter_config.json", 3, False),  # adapter weights written, nothing else
    ("open", "trainer_state.json", 3, False),  # weights, optimizer, scheduler and RNG states written
    ("open", checkpoints.MANIFEST, 3, False),  # all files written (Ember's metadata too), not sealed
    ("os.rename", "checkpoint-6", 3, True),  # sealed, not renamed into place
    ("os.rename", "deleting-checkpoint-3", 6, False),  # renamed into place; rotation about to move checkpoint-3
    ("os.remove", "optimizer.pt", 6, True),  # rotation half way through deleting checkpoint-3's files
]


@pytest.fixture
def recorded_batches(monkeypatch):
    """The input ids of every micro-batch training computes a loss on, in order (for the batch-order comparison)."""
    from ember.training.trainer import EmberTrainer

    batches: list[list[list[int]]] = []
    real = EmberTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        if model.training:
            batches.append(inputs["input_ids"].tolist())
        return real(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(EmberTrainer, "compute_loss", recording)
    return batches


_STRAIGHT: dict = {}


@pytest.fixture
def straight(tiny_run_config, tmp_path_factory, recorded_batches) -> dict:
    """The uninterrupted run (once per session): its logged losses, batches and final weights."""
    if not _STRAIGHT:
        result = train(tiny_run_config(*RUN, f"output.dir={tmp_path_factory.mktemp('straight')}"))
        _STRAIGHT.update(losses=logged_losses(result.output_dir), batches=list(recorded_batches),
                         weights=saved_tensors(result.output_dir))
        assert len(_STRAIGHT["batches"]) == 16 and len(_STRAIGHT["losses"]) == 8  # 8 steps x GA 2, two epochs
        recorded_batches.clear()
    return _STRAIGHT


@pytest.mark.slow
@pytest.mark.parametrize("event, name, survivor, full", KILL_POINTS, ids=[f"{e}:{n}" for e, n, *_ in KILL_POINTS])
def test_kill_during_a_save_then_auto_resume_is_bit_exact(tiny_run_config, tmp_path, straight, recorded_batches,
                                                         capsys, event, name, survivor, full):
    out = tmp_path / "killed"
    raw = to_dict(tiny_run_config(*RUN, f"output.dir={out}"))
    log = tmp_path / "child.log"
    assert run_child(raw, event, name, log) == -signal.SIGKILL, log.read_text()[-3000:]

    # Never a partial `checkpoint-*` folder: each one is complete, and the newest is the one expected.
    found = checkpoints.scan(out)
    assert all(checkpoints.problem(p) is None for p in out.glob("checkpoint-*"))
    assert found.newest is not None and found.newest.name == f"checkpoint-{survivor}"
    assert len(found.complete) >= 1

    cfg = tiny_run_config(*RUN, f"output.dir={out}", "train.resume_from_checkpoint=auto")
    capsys.readouterr()
    assert resolve_resume(cfg) == str(out / f"checkpoint-{survivor}")
    printed = capsys.readouterr().out
    if survivor == 3:
        assert "resume: ignoring 1 incomplete checkpoint(s): checkpoint-6 (an interrupted save" in printed
    else:
        assert "ignoring" not in printed
    if not full:  # resuming from a complete checkpoint is the same wherever the kill came: two cases show it
        return

    recorded_batches.clear()
    resumed = train(cfg)

    assert logged_losses(resumed.output_dir) == straight["losses"]  # exactly
    assert recorded_batches == straight["batches"][survivor * 2:]  # the same batches, in the same order
    expected, got = straight["weights"], saved_tensors(resumed.output_dir)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(got[key], expected[key]), key
    # Rotation ran again after the resumed saves: only the final checkpoint is left, and no leftovers.
    assert [p.name for p in checkpoints.scan(out).complete] == ["checkpoint-8"]
    assert not (out / checkpoints.STAGING).exists() or not any((out / checkpoints.STAGING).iterdir())


@pytest.mark.slow
def test_a_full_disk_during_a_save_stops_with_a_message_and_keeps_the_last_checkpoint(tiny_run_config, tmp_path):
    out = tmp_path / "full"
    raw = to_dict(tiny_run_config(*RUN, f"output.dir={out}"))
    log = tmp_path / "child.log"
    assert run_child(raw, "shutil.rmtree", "checkpoint-6", log, action="full") == 3, log.read_text()[-3000:]
    message = log.read_text().splitlines()[-1]
    assert message.startswith(f"error: could not write checkpoint-6 into {out}: ")
    assert message.endswith(f"the newest complete checkpoint, {out / 'checkpoint-3'}, is kept. Free space (or fix the "
                            "permissions) and continue with train.resume_from_checkpoint=auto")
    assert "Traceback" not in log.read_text()
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-3"] and checkpoints.problem(out / "checkpoint-3") is None
    assert not any((out / checkpoints.STAGING).iterdir())


def test_a_checkpoint_with_a_missing_or_truncated_file_is_not_complete(tmp_path):
    folder = tmp_path / "checkpoint-4"
    folder.mkdir()
    (folder / "optimizer.pt").write_bytes(b"x" * 10)
    (folder / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
    assert checkpoints.problem(folder) is None  # no manifest, but a readable trainer state: an older Ember's save
    checkpoints.write_manifest(folder, 4)
    assert checkpoints.problem(folder) is None
    (folder / "optimizer.pt").write_bytes(b"x" * 7)
    assert checkpoints.problem(folder) == "optimizer.pt has 7 bytes, the manifest says 10"
    (folder / "optimizer.pt").unlink()
    assert checkpoints.problem(folder) == "optimizer.pt is missing"
    (folder / checkpoints.MANIFEST).unlink()
    (folder / "trainer_state.json").unlink()
    assert checkpoints.problem(folder) == "no ember_checkpoint.json and no trainer_state.json: the save did not finish"


def test_rotation_keeps_the_newest_and_the_best_and_ignores_partial_folders(tmp_path):
    for step in (2, 4, 6, 8):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": step}))
        checkpoints.write_manifest(folder, step)
    (tmp_path / "checkpoint-10").mkdir()  # partial: never counted, never deleted
    removed = checkpoints.rotate(tmp_path, 2, keep=str(tmp_path / "checkpoint-2"))
    assert [p.name for p in removed] == ["checkpoint-4", "checkpoint-6"]
    assert sorted(p.name for p in tmp_path.glob("checkpoint-*")) == ["checkpoint-10", "checkpoint-2", "checkpoint-8"]


def test_resume_from_an_explicit_incomplete_checkpoint_fails(tiny_run_config, tmp_path):
    from ember.errors import ConfigError

    folder = tmp_path / "checkpoint-2"
    folder.mkdir()
    with pytest.raises(ConfigError, match=r"checkpoint-2 is not a complete checkpoint \(no ember_checkpoint.json and "
                                          r"no trainer_state.json: the save did not finish\); train.resume_from_check"):
        train(tiny_run_config(f"train.resume_from_checkpoint={folder}"))
