"""`train:` → TrainingArguments: notices a user would otherwise never see."""

from __future__ import annotations

import logging


def test_a_paged_optimizer_on_cpu_is_said_to_run_unpaged(tiny_run_config, caplog):
    from ember.training.arguments import training_arguments

    with caplog.at_level(logging.WARNING, logger="ember.training.arguments"):
        training_arguments(tiny_run_config("train.optim=paged_adamw_32bit", "train.use_cpu=true"))
    assert ("train.optim=paged_adamw_32bit: paged optimizers page state to GPU memory; on a CPU bitsandbytes runs "
            "the same optimizer without paging") in caplog.messages
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ember.training.arguments"):
        training_arguments(tiny_run_config("train.optim=adamw_torch", "train.use_cpu=true"))
    assert caplog.messages == []
