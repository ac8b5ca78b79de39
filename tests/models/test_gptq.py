"""LoRA on a GPTQ int4 base: the checkpoint is quantized here, on the CPU, by transformers' own GPTQ path (optimum +
gptqmodel's torch kernels), then trained by Ember as a plain `method.type: lora` run and exported merged.

Needs the `gptq` extra (optimum, gptqmodel<7.7: 7.7 requires torch 2.14); skipped without it.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("optimum")
pytest.importorskip("gptqmodel")

from ember.data.collate import PadCollator  # noqa: E402
from ember.errors import ConfigError  # noqa: E402
from ember.training.run import train  # noqa: E402

from tests.training.helpers import GradCapture, logged_losses, saved_tensors  # noqa: E402

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
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
    from transformers import AutoModelForCausalLM

    from ember.export.merge import export
    from ember.inference.loading import load_for_inference
    from ember.models.compat import keep_gptq_trainable_on_cpu
    from ember.models.quantized import quantized_linears
    from ember.training.losses import causal_lm_loss
    from ember.training.prepare import prepare_data

    cfg = gptq_run_config("train.max_steps=2", "train.per_device_train_batch_size=8", "train.learning_rate=1e-2")
    samples = prepare_data(cfg, progress=False).data.train
    assert len(samples) == 8
    grads = GradCapture()
    result = train(cfg, callbacks=[grads])

    # Step 1's loss is the GPTQ base's own loss (LoRA starts as a no-op), computed here with plain transformers.
    base = AutoModelForCausalLM.from_pretrained(gptq_dir, dtype=torch.float32, device_map="cpu")
    assert len(quantized_linears(base)) == 14 and not any(isinstance(m, torch.nn.Linear) and n.endswith("_proj")
                                                         for n, m in base.named_modules())
    batch = PadCollator(pad_token_id=0)([{"input_ids": s.input_ids, "labels": s.labels} for s in samples])
    with torch.no_grad():
        logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference = float(causal_lm_loss(logits, batch["labels"]))
    losses = logged_losses(result.output_dir)
    assert len(losses) == 2 and abs(losses[0] - reference) <= 1e-4, (losses, reference)

    # Only LoRA trains, every adapted projection of both layers; at step 2 (B no longer 0) every grad is non-zero.
    names = {n for n in grads.steps[1]}
    assert len(names) == 2 * 7 * 2 and all("lora_" in n for n in names)
    assert {n.split(".")[-4] for n in names} == set(PROJECTIONS)
    assert all(g.abs().sum() > 0 for g in grads.steps[1].values())
    adapter = saved_tensors(result.output_dir)
    assert all(t.abs().sum() > 0 for n, t in adapter.items() if "lora_B" in n)  # B started at 0

    # Export: a plain fp32 model (no quantization_config) whose logits match the quantized base + adapter.
    merged_dir = tmp_path / "merged"
    export(str(result.output_dir), str(merged_dir))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32)
    assert getattr(merged.config, "quantization_config", None) is None
    assert type(merged.model.layers[0].mlp.gate_proj) is torch.nn.Linear
    exact, chat = (load_for_inference(str(result.output_dir), dtype="float32").model for _ in range(2))
    assert len(quantized_linears(chat)) == 14  # chat and serve keep the int4 base
    assert keep_gptq_trainable_on_cpu(exact) == 14
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        got = merged(**inputs).logits
        assert (got - exact(**inputs).logits).abs().max() <= MERGE_TOLERANCE
        assert (got - chat(**inputs).logits).abs().max() <= KERNEL_TOLERANCE
    assert (got - logits).abs().max() > 100 * MERGE_TOLERANCE  # the adapter is in there


def test_dequantized_layers_compute_what_the_int4_kernel_computes(gptq_dir):
    from transformers import AutoModelForCausalLM

    from ember.models.quantized import dequantize, quantized_linears

    from ember.models.compat import keep_gptq_trainable_on_cpu

    model = AutoModelForCausalLM.from_pretrained(gptq_dir, dtype=torch.float32, device_map="cpu")
    keep_gptq_trainable_on_cpu(model)  # else the first eval forward repacks the weights (see the test below)
    layers = quantized_linears(model)
    x = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = {n: m(x[..., :m.in_features]) for n, m in layers.items()}
    assert dequantize(model) == 14 and not quantized_linears(model) and not model.is_quantized
    with torch.no_grad():
        for name, out in want.items():
            dense = model.get_submodule(name)
            assert type(dense) is torch.nn.Linear and out.shape[-1] == dense.out_features
            torch.testing.assert_close(dense(x[..., :dense.in_features]), out, rtol=0, atol=1e-5)


@pytest.mark.parametrize("overrides, message", [
    (("method.type=qlora",), r"already quantized \(gptq.*use method.type=lora"),
    (("method.type=full",), r"quantized checkpoint \(gptq\).*use method.type=lora"),
])
def test_a_gptq_base_is_never_quantized_again_nor_fully_trained(gptq_run_config, overrides, message):
    with pytest.raises(ConfigError, match=message):
        train(gptq_run_config(*overrides))


def test_all_linear_targets_are_the_quantized_projections(gptq_dir):
    from transformers import AutoModelForCausalLM

    from ember.config.schema import MethodConfig
    from ember.models.adapters import apply_method

    base = AutoModelForCausalLM.from_pretrained(gptq_dir, dtype=torch.float32, device_map="cpu")
    model = apply_method(base, MethodConfig(type="lora", rank=4), None)
    assert sorted(model.peft_config["default"].target_modules) == sorted(PROJECTIONS)


def lora_grads(model, ids: torch.Tensor) -> dict[str, torch.Tensor | None]:
    model.train()
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters() if "lora_" in n}


def adapted_gptq(gptq_dir, workaround: bool):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ember.config.schema import MethodConfig
    from ember.models.adapters import apply_method

    base = AutoModelForCausalLM.from_pretrained(gptq_dir, dtype=torch.float32, device_map="cpu")
    torch.manual_seed(0)
    if workaround:
        model = apply_method(base, MethodConfig(type="lora", rank=4, dropout=0.0), None)
    else:
        model = get_peft_model(base, LoraConfig(r=4, target_modules=PROJECTIONS, lora_dropout=0.0,
                                                task_type="CAUSAL_LM"))
    for name, p in model.named_parameters():  # B = 0 would leave lora_A's grads 0 either way
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.1, generator=torch.Generator().manual_seed(0))
    return model


@pytest.mark.parametrize("workaround", [True, False], ids=["ember", "bug-without-the-workaround"])
def test_lora_grads_survive_an_eval_pass_before_training(gptq_dir, workaround):
    """An eval (or generate) before the first training forward repacks gptqmodel's CPU layers for good; Ember's
    `keep_gptq_trainable_on_cpu` prevents it. When the `False` case fails, gptqmodel fixed it and the shim can go."""
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    reference = lora_grads(adapted_gptq(gptq_dir, workaround=True), ids)
    assert all(g is not None and g.abs().sum() > 0 for g in reference.values())
    model = adapted_gptq(gptq_dir, workaround)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = lora_grads(model, ids)
    same = all(after[n] is not None and torch.allclose(after[n], g, rtol=1e-5, atol=1e-7)
               for n, g in reference.items())
    assert same is workaround
