"""`ember train CONFIG [overrides]`."""

from __future__ import annotations


def cmd_train(args) -> int:
    from ember.config import load_config
    from ember.training.run import train

    cfg = load_config(args.config, args.overrides)
    train(cfg)
    return 0


def register(sub) -> None:
    p = sub.add_parser("train", help="continued pretraining (stage: pt) or fine-tuning (stage: sft) from one YAML")
    p.add_argument("config", help="run config YAML")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.learning_rate=1e-4 data.max_length=2048")
    p.set_defaults(func=cmd_train)
