"""`ember plan CONFIG [overrides] [--gpus N] [--gpu-memory GIB] [--json]`: exit 0 when it fits, 1 when it does not."""

from __future__ import annotations

import json
import math

from ember.errors import ConfigError


def cmd_plan(args) -> int:
    from ember.config import load_config, validate
    from ember.planning import plan, render, to_json

    cfg = validate(load_config(args.config, args.overrides))
    result = plan(cfg, _target(args.gpus, args.gpu_memory))
    if args.json:
        print(json.dumps(to_json(result), indent=2))
    else:
        print(render(result, args.config))
    return 0 if result.fits else 1


def _target(gpus, gpu_memory):
    import torch

    from ember.planning import Target, machine_target
    from ember.planning.memory import GIB

    if gpus is None and gpu_memory is None:
        return machine_target()
    if gpus is not None and gpus < 1:
        raise ConfigError(f"--gpus {gpus}: give at least 1")
    if gpu_memory is not None and not (math.isfinite(gpu_memory) and gpu_memory > 0):  # argparse's float takes nan, inf
        raise ConfigError(f"--gpu-memory {gpu_memory}: give the memory of one GPU in GiB, e.g. --gpu-memory 80")
    if gpu_memory is None:
        if not torch.cuda.is_available():
            raise ConfigError(f"--gpus {gpus} on a machine without a GPU: also give the memory of one GPU, "
                              "e.g. --gpu-memory 80")
        memory = torch.cuda.get_device_properties(0).total_memory
    else:
        memory = int(gpu_memory * GIB)
    return Target(True, gpus or 1, memory)


def register(sub) -> None:
    p = sub.add_parser("plan", help="predict peak memory per device from the model's config; say whether it fits")
    p.add_argument("config", help="run config YAML (the one `ember train` takes)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.per_device_train_batch_size=8")
    p.add_argument("--gpus", type=int, default=None, help="plan for N GPUs (default: this machine's GPUs, or its CPU)")
    p.add_argument("--gpu-memory", type=float, default=None, metavar="GIB",
                   help="memory of one GPU in GiB (default: this machine's first GPU)")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.set_defaults(func=cmd_plan)
