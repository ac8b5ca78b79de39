"""Two "nodes" of one process each on 127.0.0.1 (`torchrun --nnodes 2 --node_rank N --rdzv_endpoint HOST:PORT`).

Both nodes run the same config except `output.dir`, so what each one writes can be told apart (a cluster without a
shared output folder): node 1 (global rank 1, but local rank 0 on its node, like every node's first process)
must write no run file, must not prepare the data but read rank 0's cache, and the two train like one process.
"""

from __future__ import annotations

import pytest
import torch

from ember.training.run import train

from .helpers import (check_ok, free_port, launch_env, logged_losses, saved_tensors, start_group, torchrun, wait_group,
                      write_config)

pytestmark = pytest.mark.slow


def test_two_nodes_train_like_one_process_and_only_rank0_writes(run_config, tmp_path):
    common = ("method.type=full", "train.max_steps=3", "train.save_strategy=steps", "train.save_steps=3",
              "train.report_to=tensorboard")
    cache = tmp_path / "data_cache"  # on the filesystem both nodes share, like $EMBER_CACHE on a cluster
    cfg = run_config(*common, "train.per_device_train_batch_size=2", "data.cache=true", f"data.cache_dir={cache}")
    path = write_config(cfg, tmp_path / "run.yaml")
    port = free_port()
    nodes = [
        start_group(torchrun("--nnodes", "2", "--nproc_per_node", "1", "--node_rank", str(node),
                             "--rdzv_endpoint", f"127.0.0.1:{port}",
                             "-m", "ember", "-v", "train", str(path), f"output.dir={tmp_path / f'node{node}'}"),
                    launch_env())
        for node in (0, 1)
    ]
    node0, node1 = (wait_group(proc, timeout=300) for proc in nodes)
    check_ok(node0)
    check_ok(node1)

    # Data preparation ran once, on global rank 0; rank 1 waited at the barrier and read the cache.
    logs = node0.stderr + node1.stderr
    assert logs.count("data processed") == 1 and "rank 0: data processed" in node0.stderr
    assert "rank 1: data read from the cache" in node1.stderr
    assert len([p for p in cache.iterdir() if not p.name.endswith(".lock")]) == 1

    # Rank 0 alone prints and writes run files; rank 1's output folder gets only its own RNG state for the checkpoint
    # (each rank restores its own on resume; with a shared output folder it lands in rank 0's checkpoint).
    assert node0.stdout.count("resolved config:") == 1 and "resolved config:" not in node1.stdout
    out0, out1 = tmp_path / "node0", tmp_path / "node1"
    assert {"ember_run.yaml", "data_report.json", "metrics.json", "trainer_state.json", "model.safetensors",
            "loss.png", "checkpoint-3"} <= {p.name for p in out0.iterdir()}
    assert len(list(out0.rglob("events.out.tfevents.*"))) == 1
    written_by_rank1 = [p.name for p in out1.rglob("*") if p.is_file()] if out1.exists() else []
    assert written_by_rank1 == ["rng_state_1.pth"]

    # One process, 2 × 2 accumulated: the same global batch, the same losses and weights.
    single = train(run_config(*common, "train.per_device_train_batch_size=2", "train.gradient_accumulation_steps=2",
                              f"output.dir={tmp_path / 'single'}"))
    assert logged_losses(out0) == pytest.approx(logged_losses(single.output_dir), rel=1e-5)
    two_nodes = saved_tensors(out0)
    for name, tensor in saved_tensors(single.output_dir).items():
        torch.testing.assert_close(two_nodes[name], tensor, rtol=1e-4, atol=1e-6)
