"""Checks shared by the GPTQ and AWQ tests (tests/models/test_gptq.py, test_awq.py): a checkpoint quantized before
Ember sees it, loaded by transformers into gptqmodel's CPU layers, LoRA-trained by Ember and exported merged.

Imported only by those two files, which skip without gptqmodel.
"""

from __future__ import annotations

from pathlib import Path

import torch

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
LAYERS = 2 * len(PROJECTIONS)  # quantized linears of the 2-layer tiny model
# (overrides, message) pairs for `train`: a quantized base is never quantized again nor trained whole
REFUSED = [(("method.type=qlora",), r"already quantized \({}.*use method.type=lora"),
           (("method.type=full",), r"quantized checkpoint \({}\).*use method.type=lora")]


def refused(method: str) -> list[tuple[tuple[str, ...], str]]:
    return [(overrides, message.format(method)) for overrides, message in REFUSED]


def load_quantized(path: str):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, device_map="cpu")


def train_and_export(cfg, base_dir: str, out: Path, layer_type: str, merge_tol: float, kernel_tol: float
                     ) -> list[float]:
    """Trains `cfg` (LoRA on the quantized base at `base_dir`, all 8 samples in each step), checks what trained and
    what `ember export` wrote, and returns the logged losses. Checks: step 1's loss is the base's own loss; only
    LoRA gets gradients, on every projection; the saved adapter loads with peft alone; the merged export is a plain
    model whose logits equal base + adapter within `merge_tol` on the training path (the exact de-quantise +
    matmul) and within `kernel_tol` of the int4 kernel chat and serve keep."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ember.data.collate import PadCollator
    from ember.export.merge import export
    from ember.inference.loading import load_for_inference
    from ember.models.compat import keep_gptq_trainable_on_cpu
    from ember.models.quantized import quantized_linears
    from ember.training.losses import causal_lm_loss
    from ember.training.prepare import prepare_data
    from ember.training.run import train
    from tests.training.helpers import GradCapture, logged_losses, saved_tensors

    samples = prepare_data(cfg, progress=False).data.train
    assert len(samples) == 8 == cfg.train.per_device_train_batch_size
    grads = GradCapture()
    result = train(cfg, callbacks=[grads])

    # Step 1's loss is the base's own loss (LoRA starts as a no-op), computed here with plain transformers.
    base = load_quantized(base_dir)
    layers = quantized_linears(base)
    assert len(layers) == LAYERS and {type(m).__name__ for m in layers.values()} == {layer_type}
    assert not any(isinstance(m, torch.nn.Linear) and n.endswith("_proj") for n, m in base.named_modules())
    assert keep_gptq_trainable_on_cpu(base) == LAYERS  # the exact path, as in training
    batch = PadCollator(pad_token_id=0)([{"input_ids": s.input_ids, "labels": s.labels} for s in samples])
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        logits = base(**inputs).logits
    reference = float(causal_lm_loss(logits, batch["labels"]))
    losses = logged_losses(result.output_dir)
    assert len(losses) == cfg.train.max_steps and abs(losses[0] - reference) <= 1e-4, (losses, reference)

    # Only LoRA trains, every adapted projection of both layers; at step 2 (B no longer 0) every grad is non-zero.
    names = set(grads.steps[1])
    assert len(names) == LAYERS * 2 and all("lora_" in n for n in names)
    assert {n.split(".")[-4] for n in names} == set(PROJECTIONS)
    assert all(g.abs().sum() > 0 for g in grads.steps[1].values())
    adapter = saved_tensors(result.output_dir)
    assert all(t.abs().sum() > 0 for n, t in adapter.items() if "lora_B" in n)  # B started at 0

    # The saved adapter is a plain peft one: peft loads it onto the quantized base by itself.
    peft_model = PeftModel.from_pretrained(load_quantized(base_dir), str(result.output_dir))
    assert keep_gptq_trainable_on_cpu(peft_model) == LAYERS
    assert sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n) == sum(
        t.numel() for t in adapter.values())

    # Export: a plain fp32 model (no quantization_config) whose logits match the quantized base + adapter.
    export(str(result.output_dir), str(out))
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert getattr(merged.config, "quantization_config", None) is None
    assert all(type(merged.get_submodule(n)) is torch.nn.Linear for n in layers)
    exact, chat = (load_for_inference(str(result.output_dir), dtype="float32").model for _ in range(2))
    assert len(quantized_linears(chat)) == LAYERS  # chat and serve keep the int4 base
    assert keep_gptq_trainable_on_cpu(exact) == LAYERS
    with torch.no_grad():
        got = merged(**inputs).logits
        assert (got - peft_model(**inputs).logits).abs().max() <= merge_tol
        assert (got - exact(**inputs).logits).abs().max() <= merge_tol
        assert (got - chat(**inputs).logits).abs().max() <= kernel_tol
    assert (got - logits).abs().max() > 100 * merge_tol  # the adapter is in there
    return losses


def check_dequantized_layers_compute_what_the_kernel_computes(base_dir: str) -> None:
    """`dequantize` turns every quantized layer into an `nn.Linear` with the output of the layer's exact path."""
    from ember.models.compat import keep_gptq_trainable_on_cpu
    from ember.models.quantized import dequantize, quantized_linears

    model = load_quantized(base_dir)
    keep_gptq_trainable_on_cpu(model)  # else the first eval forward repacks the weights (see the grads check)
    layers = quantized_linears(model)
    x = torch.randn(3, 5, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = {n: m(x[..., :m.in_features]) for n, m in layers.items()}
    assert dequantize(model) == LAYERS and not quantized_linears(model) and not model.is_quantized
    with torch.no_grad():
        for name, out in want.items():
            dense = model.get_submodule(name)
            assert type(dense) is torch.nn.Linear and out.shape[-1] == dense.out_features
            torch.testing.assert_close(dense(x[..., :dense.in_features]), out, rtol=0, atol=1e-5)


def check_all_linear_targets_are_the_quantized_projections(base_dir: str) -> None:
    from ember.config.schema import MethodConfig
    from ember.models.adapters import apply_method

    model = apply_method(load_quantized(base_dir), MethodConfig(type="lora", rank=4), None)
    assert sorted(model.peft_config["default"].target_modules) == sorted(PROJECTIONS)


def lora_grads(model, ids: torch.Tensor) -> dict[str, torch.Tensor | None]:
    model.train()
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters() if "lora_" in n}


def adapted(base_dir: str, workaround: bool):
    """LoRA on the quantized base: through Ember (`workaround`) or through peft alone; B drawn non-zero."""
    from peft import LoraConfig, get_peft_model

    from ember.config.schema import MethodConfig
    from ember.models.adapters import apply_method

    base = load_quantized(base_dir)
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


def grads_survive_an_eval_pass(base_dir: str, workaround: bool) -> bool:
    """Whether LoRA's gradients after an eval forward equal those of a model that never ran one. gptqmodel's CPU
    layers switch for good to a no-grad int4 kernel on their first eval forward; Ember's `keep_gptq_trainable_on_cpu`
    prevents it (True with the workaround, False without it until gptqmodel fixes it)."""
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    reference = lora_grads(adapted(base_dir, workaround=True), ids)
    assert all(g is not None and g.abs().sum() > 0 for g in reference.values())
    model = adapted(base_dir, workaround)
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)
    after = lora_grads(model, ids)
    return all(after[n] is not None and torch.allclose(after[n], g, rtol=1e-5, atol=1e-7)
               for n, g in reference.items())
