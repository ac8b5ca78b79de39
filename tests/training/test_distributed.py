"""What the processes of one run agree on, checked without launching any (the launches: test_ddp, test_deepspeed,
test_multinode)."""

from __future__ import annotations

from transformers import TrainingArguments

from ember.training.distributed import fsdp_without_gpus, is_main_process, rank


def test_rank_is_the_global_rank_the_launcher_sets(monkeypatch):
    monkeypatch.delenv("RANK", raising=False)
    assert (rank(), is_main_process()) == (0, True)  # no launcher: the one process is rank 0
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "0")  # the first process of node 1 is local rank 0, but it does not write
    assert (rank(), is_main_process()) == (3, False)


def test_fsdp_on_cpu_is_named_not_silently_run_as_ddp(monkeypatch, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none")
    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert fsdp_without_gpus(args) is None
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # what `accelerate launch` with an FSDP config sets
    assert fsdp_without_gpus(args).startswith("warning: FSDP needs GPUs; on CPUs accelerate runs this job as plain DDP")


def test_a_launched_rank_ends_after_what_interpreter_exit_runs(tmp_path):
    """A finished rank stops before interpreter teardown (where gloo threads that outlive a held process group abort
    it), but only after joining its threads, running every atexit handler and flushing its output."""
    import subprocess
    import sys

    script = tmp_path / "rank.py"
    script.write_text(
        "import atexit, threading, time, pathlib\n"
        "from ember.training.cli import _exit_before_teardown\n"
        f"out = pathlib.Path({str(tmp_path)!r})\n"
        "atexit.register(lambda: (out / 'atexit').write_text('ran'))\n"
        "threading.Thread(target=lambda: (time.sleep(0.2), (out / 'thread').write_text('joined'))).start()\n"
        "print('last line', end='')\n"
        "_exit_before_teardown(0)\n"
        "print('never')\n", encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "last line"), done.stderr
    assert (tmp_path / "atexit").read_text() == "ran" and (tmp_path / "thread").read_text() == "joined"
