"""`ember train CONFIG [overrides]`."""

from __future__ import annotations


def cmd_train(args) -> int:
    from ember.config import load_config
    from ember.training.run import train

    cfg = load_config(args.config, args.overrides)
    try:
        train(cfg)
    finally:
        distributed = _end_process_group()
    if distributed:
        _exit_before_teardown(0)
    return 0


def _end_process_group() -> bool:
    """Under a launcher, leave the process group before the interpreter exits; True when there was one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
        return True
    return False


def _exit_before_teardown(code: int) -> None:
    """End a launched rank the way interpreter exit does (non-daemon threads joined, atexit handlers run, output
    flushed), then stop before the interpreter's own teardown.

    Why: a process group whose Python handle something still holds is not destroyed by `destroy_process_group` (DeepSpeed
    ZeRO-3 keeps the top module, and with it every parameter's process group, in a module-level stack for the life of
    the process). Its gloo worker threads then outlive the interpreter; one that drops the last reference to a finished
    collective's tensors during teardown needs the GIL, cannot get it, and aborts the rank (`terminate called without an
    active exception`, exit -6) after everything was saved (pytorch/pytorch#190489). Under load this hit about one
    ZeRO-3 run in 25 here. Skipping only the teardown, after everything interpreter exit runs, avoids the race.
    """
    import atexit
    import os
    import sys
    import threading

    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()  # no public spelling; the same call interpreter exit makes
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def register(sub) -> None:
    p = sub.add_parser("train", help="continued pretraining (stage: pt) or fine-tuning (stage: sft) from one YAML")
    p.add_argument("config", help="run config YAML")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.learning_rate=1e-4 data.max_length=2048")
    p.set_defaults(func=cmd_train)
