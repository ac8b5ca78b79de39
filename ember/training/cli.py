"""`ember train CONFIG [overrides]`."""

from __future__ import annotations


def cmd_train(args) -> int:
    from ember.config import load_config
    from ember.training.run import train

    cfg = load_config(args.config, args.overrides)
    try:
        train(cfg)
    finally:
        _end_process_group()
    return 0


def _end_process_group() -> None:
    """Under a launcher, leave the process group before the interpreter exits: its communication threads (gloo,
    DeepSpeed's shared-memory op) are then joined, instead of being destroyed while still running at exit, which
    aborts a rank (`terminate called without an active exception`, exit -6) after the run has finished."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def register(sub) -> None:
    p = sub.add_parser("train", help="continued pretraining (stage: pt) or fine-tuning (stage: sft) from one YAML")
    p.add_argument("config", help="run config YAML")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.learning_rate=1e-4 data.max_length=2048")
    p.set_defaults(func=cmd_train)
