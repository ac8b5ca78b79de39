"""What the processes of one run (torchrun, accelerate launch, deepspeed; one node or many) agree on.

Every process runs the whole of `ember train`. Rank 0 (global, across nodes) alone prints and writes run files;
rank 0 prepares the data while the others wait at a barrier and then read its cache; DeepSpeed's own
communication layer is started before a ZeRO-3 model is built.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Optional

log = logging.getLogger(__name__)


def rank() -> int:
    """Global rank of this process (0 without a launcher); torchrun, accelerate and deepspeed all set RANK."""
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    return rank() == 0


@contextlib.contextmanager
def main_process_first(args, shared_cache: bool) -> Iterator[None]:
    """Run the body on global rank 0 first, then on the other ranks (`TrainingArguments.main_process_first`).

    With the processed-data cache on (`shared_cache`), rank 0 processes and writes the cache and every other rank,
    released by a barrier, reads it: the work is done once when $EMBER_CACHE is on a filesystem all nodes share.
    (Without a shared filesystem the first rank of each other node processes once more, serialised by the cache's
    file lock.) Without the cache there is nothing to share, so every rank processes its own copy at once.
    The barrier waits up to `train.extra.ddp_timeout` seconds (1800 by default): raise it for hour-long datasets.
    """
    if not shared_cache:
        yield
        return
    with args.main_process_first(local=False, desc="data preparation"):
        yield


def start_deepspeed_comm(args) -> None:
    """Start `deepspeed.comm` over the process group the Trainer's arguments opened, when DeepSpeed is in use.

    On GPUs accelerate does this itself. On CPUs (`use_cpu`) it opens a plain gloo group and leaves DeepSpeed's
    layer to `deepspeed.initialize`, which comes too late for ZeRO-3: `zero.Init` partitions the weights while the
    model is built and reads the world size from `deepspeed.comm` (an unstarted one says 1, and DeepSpeed then
    rejects the batch size).
    """
    if getattr(args, "deepspeed_plugin", None) is None:  # neither train.deepspeed nor `accelerate launch` with a DeepSpeed config
        return
    import torch.distributed
    from deepspeed import comm

    if comm.is_initialized() or not torch.distributed.is_initialized():
        return
    comm.init_distributed(dist_backend=torch.distributed.get_backend(), auto_mpi_discovery=False)
    log.info("deepspeed.comm started over the %s process group", torch.distributed.get_backend())


def fsdp_without_gpus(args) -> Optional[str]:
    """A warning when FSDP was asked for (`accelerate launch` with an FSDP config, or `train.extra.fsdp`) on CPUs.

    accelerate switches to FSDP only for GPU-like devices: on CPUs the run goes on as plain DDP, every rank holding
    the whole model, and says nothing (measured with accelerate 1.15 and FSDP 1 and 2).
    """
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true" or bool(getattr(args, "fsdp", None))
    if not (asked and args.use_cpu):
        return None
    return ("warning: FSDP needs GPUs; on CPUs accelerate runs this job as plain DDP (each process holds the whole "
            "model). For sharding on CPUs use DeepSpeed ZeRO-3 (train.deepspeed: examples/deepspeed/zero3.json).")
