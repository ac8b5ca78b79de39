"""LoRA on an AWQ int4 base: the checkpoint is quantized here, on the CPU, by gptqmodel's own AWQ quantiser, loaded
by transformers' AWQ integration (gptqmodel's `TorchAtenAwqLinear` on CPU), trained by Ember as a plain
`method.type: lora` run and exported merged.

Needs gptqmodel (the `gptq` extra; CI runs this file through tests/models/test_gptq_peer.py); skipped without it.
What the quantiser needs on a CPU (gptqmodel 7.6.0), each found by running it:
- `backend=BACKEND.AWQ_TORCH`: the default for the GEMM format is `AWQ_GEMM`, which stops with
  `ValueError: AWQ: CUDA is not available.` before quantizing.
- at least 2 CPU workers (`GPTQMODEL_CPU_WORKERS`): it defaults to half the cores, and with 1 worker it stops with
  `ValueError: Virtual pool 'model_loader:cpu' requests 2 workers but parent 'cpu' only has 1`.
- linears that AWQ clips (all but q/k) with a multiple of 64 outputs (`assert org_w_shape[0] % oc_batch_size == 0`
  in its clip search): the tiny model gets 4 key/value heads, so v_proj has 64 outputs, not 32.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

pytest.importorskip("gptqmodel")

from tests.models.prequantized import (  # noqa: E402
    check_all_linear_targets_are_the_quantized_projections,
    check_dequantized_layers_compute_what_the_kernel_computes,
    grads_survive_an_eval_pass,
    load_quantized,
    refused,
    train_and_export,
)

# |merged logits - (AWQ base + adapter) logits|, logits of magnitude ~0.8 (torch 2.13 CPU, gptqmodel 7.6.0): against
# the exact de-quantise + matmul path the adapter trained on, only fp32 summation order differs (measured 3.6e-7);
# against the bf16 int4 kernel chat/serve use on CPU (TorchAtenAwqLinear's inference mode) it was 1.5e-3.
MERGE_TOLERANCE = 1e-4
KERNEL_TOLERANCE = 1e-2


@pytest.fixture(scope="module")
def awq_dir(tmp_path_factory) -> str:
    """A tiny random Llama (SmolLM2 tokenizer, 4 kv heads) quantized to 4-bit AWQ (GEMM format, zero point, group
    size 32) by gptqmodel on 8 random sequences."""
    from gptqmodel import GPTQModel
    from gptqmodel.quantization.config import AWQConfig
    from gptqmodel.utils.backend import BACKEND

    from ember.config.schema import ModelConfig
    from ember.models.loading import load_model, load_tokenizer
    from tests.conftest import TINY_LLAMA

    root = tmp_path_factory.mktemp("awq")
    cfg = ModelConfig(name_or_path="llama", random_init=True, dtype="float32",
                      config_overrides=dict(TINY_LLAMA, num_key_value_heads=4))
    tok = load_tokenizer(cfg)
    load_model(cfg, vocab_size=len(tok)).save_pretrained(root / "fp32")
    tok.save_pretrained(root / "fp32")
    g = torch.Generator().manual_seed(1)
    calibration = [{"input_ids": torch.randint(0, len(tok), (1, 32), generator=g),
                    "attention_mask": torch.ones(1, 32, dtype=torch.long)} for _ in range(8)]
    with pytest.MonkeyPatch.context() as env:
        if (os.cpu_count() or 1) < 3:  # read when gptqmodel builds its worker pool (first use in the process)
            env.setenv("GPTQMODEL_CPU_WORKERS", "2")
        q = AWQConfig(bits=4, group_size=32, sym=False, offload_to_disk=False)
        model = GPTQModel.load(str(root / "fp32"), q, device="cpu")
        model.quantize(calibration, batch_size=1, backend=BACKEND.AWQ_TORCH)
        model.save(str(root / "int4"))
    assert json.loads((root / "int4" / "config.json").read_text())["quantization_config"]["quant_method"] == "awq"
    return str(root / "int4")


@pytest.fixture
def awq_run_config(tiny_run_config, tiny_model_config, awq_dir):
    tiny_model_config.name_or_path, tiny_model_config.random_init = awq_dir, False
    tiny_model_config.config_overrides = {}
    return tiny_run_config


def test_lora_trains_on_the_awq_base_saves_a_peft_adapter_and_exports_merged(awq_run_config, awq_dir, tmp_path):
    cfg = awq_run_config("train.max_steps=4", "train.per_device_train_batch_size=8", "train.learning_rate=1e-2")
    losses = train_and_export(cfg, awq_dir, tmp_path / "merged", "TorchAtenAwqLinear", MERGE_TOLERANCE,
                              KERNEL_TOLERANCE)
    assert losses[-1] < losses[0] - 0.1, losses  # the same 8 samples each step, lr 1e-2: it learns them


def test_dequantized_layers_compute_what_the_int4_kernel_computes(awq_dir):
    check_dequantized_layers_compute_what_the_kernel_computes(awq_dir)


def test_the_int4_weights_are_the_float_weights_within_half_a_quantisation_step(awq_dir):
    """AWQ multiplies the input channels of q/k/v by a scale s and divides the RMSNorm before them by it (the random
    model's norm weights are 1, so s = 1 / the checkpoint's norm weight). q and k are never clipped, so Ember's
    de-quantised weight must be W·diag(s) within half a quantisation step, plus 2^-6·|W·s| for the bf16 arithmetic
    the quantiser runs in (measured: at most 1.1 %). A transposed or misread weight would be off by whole steps."""
    from transformers import AutoModelForCausalLM

    from ember.models.quantized import dequantize, quantized_linears

    fp32 = AutoModelForCausalLM.from_pretrained(os.path.join(os.path.dirname(awq_dir), "fp32"), dtype=torch.float32)
    model = load_quantized(awq_dir)
    layers = quantized_linears(model)
    steps = {n: m.scales.float().T.repeat_interleave(32, dim=1) for n, m in layers.items()}  # (out, in), group 32
    dequantize(model)
    checked = 0
    for name in layers:
        block, _, proj = name.rpartition(".self_attn.")
        if proj not in ("q_proj", "k_proj"):
            continue
        s = 1 / model.get_submodule(f"{block}.input_layernorm").weight
        assert bool((fp32.get_submodule(f"{block}.input_layernorm").weight == 1).all())
        want = fp32.get_submodule(name).weight * s
        err = (model.get_submodule(name).weight - want).abs()
        assert bool((err <= steps[name] / 2 + 2 ** -6 * want.abs()).all()), name
        checked += 1
    assert checked == 4


@pytest.mark.parametrize("overrides, message", refused("awq"))
def test_an_awq_base_is_never_quantized_again_nor_fully_trained(awq_run_config, overrides, message):
    from ember.errors import ConfigError
    from ember.training.run import train

    with pytest.raises(ConfigError, match=message):
        train(awq_run_config(*overrides))


def test_all_linear_targets_are_the_quantized_projections(awq_dir):
    check_all_linear_targets_are_the_quantized_projections(awq_dir)


def test_ember_plan_counts_the_awq_checkpoint_as_int4_with_lora_on_every_projection(awq_dir, tmp_path, capsys):
    from ember.cli import main
    from ember.config import load_config, validate
    from ember.planning.architecture import describe

    run = tmp_path / "run.yaml"
    run.write_text(f"""stage: sft
model: {{name_or_path: {awq_dir}, dtype: float32}}
data: {{datasets: [{{path: unused.jsonl}}], max_length: 16}}
method: {{type: lora, rank: 4}}
train: {{per_device_train_batch_size: 2, bf16: false}}
""", encoding="utf-8")
    assert main(["plan", str(run), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    # LoRA rank 4 on q,k,v,o (64 -> 64) and gate,up (64 -> 128), down (128 -> 64), in both layers
    lora = 2 * (4 * 4 * (64 + 64) + 2 * 4 * (64 + 128) + 4 * (128 + 64))
    embed = 49152 * 64
    linears = 4 * 64 * 64 + 3 * 64 * 128
    assert data["params"] == {"total": 2 * embed + 2 * linears + 5 * 64 + lora, "trainable": lora}
    assert data["fits"] is True
    shape = describe(validate(load_config(str(run), [])), gpu=False)  # what the plan counted: the linears as int4
    assert {g.dtype: g.numel for g in shape.groups if not g.trainable} == {"awq": 2 * linears,
                                                                          "float32": 2 * embed + 5 * 64}


@pytest.mark.parametrize("workaround", [True, False], ids=["ember", "bug-without-the-workaround"])
def test_lora_grads_survive_an_eval_pass_before_training(awq_dir, workaround):
    """As with GPTQ: an eval (or generate) before the first training forward repacks gptqmodel's CPU AWQ layers for
    good; Ember's `keep_gptq_trainable_on_cpu` prevents it. When the `False` case fails, gptqmodel fixed it."""
    assert grads_survive_an_eval_pass(awq_dir, workaround) is workaround
