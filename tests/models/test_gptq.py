"""LoRA on a GPTQ int4 base: the checkpoint is quantized here, on the CPU, by transformers' own GPTQ path (optimum +
gptqmodel's torch kernels), then trained by Ember as a plain `method.type: lora` run and exported merged.

Needs the `gptq` extra (optimum, gptqmodel<7.7: 7.7 requires torch 2.14); skipped without it.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("optimum")
pytest.importorskip("gptqmodel")

from tests.models.prequantized import (  # noqa: E402
    check_all_linear_targets_are_the_quantized_projections,
    check_dequantized_layers_compute_what_the_kernel_computes,
    grads_survive_an_eval_pass,
    refused,
    train_and_export,
)

# |merged logits - (GPTQ base + adapter) logits|, logits of magnitude ~0.5 (torch 2.13 CPU, gptqmodel 7.6.0):
# against the exact de-quantise + matmul path the adapter trained on, only fp32 summation order differs;
# against the bf16 int4 kernel chat/serve use on CPU (TorchAtenLinear's inference mode) it was 2.9e-3.
MERGE_TOLERANCE = 1e-4
KERNEL_TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def gptq_dir(tmp_path_factory) -> str:
    """The tiny random Llama (SmolLM2 tokenizer) quantized to 4-bit GPTQ, group size 32, on 8 random sequences."""
    from transformers import AutoModelForCausalLM, GPTQConfig

    from ember.config.schema import ModelConfig
    from ember.models.loading import load_model, load_tokenizer
    from tests.conftest import TINY_LLAMA

    root = tmp_path_factory.mktemp("gptq")
    cfg = ModelConfig(name_or_path="llama", random_init=True, config_overrides=dict(TINY_LLAMA), dtype="float32")
    tok = load_tokenizer(cfg)
    load_model(cfg, vocab_size=len(tok)).save_pretrained(root / "fp32")
    g = torch.Generator().manual_seed(1)
    calibration = [{"input_ids": torch.randint(0, len(tok), (1, 32), generator=g),
                    "attention_mask": torch.ones(1, 32, dtype=torch.long)} for _ in range(8)]
    q = GPTQConfig(bits=4, group_size=32, desc_act=False, dataset=calibration)
    model = AutoModelForCausalLM.from_pretrained(root / "fp32", dtype=torch.float32, quantization_config=q,
                                                 device_map="cpu")
    model.config.quantization_config.dataset = None  # tensors: not JSON (and not needed to load the checkpoint)
    model.save_pretrained(root / "int4")
    tok.save_pretrained(root / "int4")
    return str(root / "int4")


@pytest.fixture
def gptq_run_config(tiny_run_config, tiny_model_config, gptq_dir):
    tiny_model_config.name_or_path, tiny_model_config.random_init = gptq_dir, False
    tiny_model_config.config_overrides = {}
    return tiny_run_config


def test_lora_trains_on_the_gptq_base_and_exports_merged_into_its_dequantised_weights(gptq_run_config, gptq_dir,
                                                                                    tmp_path):
    cfg = gptq_run_config("train.max_steps=2", "train.per_device_train_batch_size=8", "train.learning_rate=1e-2")
    losses = train_and_export(cfg, gptq_dir, tmp_path / "merged", "TorchAtenLinear", MERGE_TOLERANCE,
                              KERNEL_TOLERANCE)
    assert losses[1] < losses[0], losses


def test_dequantized_layers_compute_what_the_int4_kernel_computes(gptq_dir):
    check_dequantized_layers_compute_what_the_kernel_computes(gptq_dir)


@pytest.mark.parametrize("overrides, message", refused("gptq"))
def test_a_gptq_base_is_never_quantized_again_nor_fully_trained(gptq_run_config, overrides, message):
    from ember.errors import ConfigError
    from ember.training.run import train

    with pytest.raises(ConfigError, match=message):
        train(gptq_run_config(*overrides))


def test_all_linear_targets_are_the_quantized_projections(gptq_dir):
    check_all_linear_targets_are_the_quantized_projections(gptq_dir)


@pytest.mark.parametrize("workaround", [True, False], ids=["ember", "bug-without-the-workaround"])
def test_lora_grads_survive_an_eval_pass_before_training(gptq_dir, workaround):
    """An eval (or generate) before the first training forward repacks gptqmodel's CPU layers for good; Ember's
    `keep_gptq_trainable_on_cpu` prevents it. When the `False` case fails, gptqmodel fixed it and the shim can go."""
    assert grads_survive_an_eval_pass(gptq_dir, workaround) is workaround
