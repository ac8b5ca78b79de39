"""QLoRA (bitsandbytes nf4) on CPU: it trains, and an eval pass does not silently cut the LoRA gradients.

The cut is the bitsandbytes bug that `ember.models.compat.keep_4bit_trainable_on_cpu` works around (see its
docstring): when `test_the_bug_is_still_there_without_the_workaround` fails, bitsandbytes fixed it and the shim can go.
"""

from __future__ import annotations

import json

import pytest
import torch

from ember.config.schema import MethodConfig
from ember.training.run import train

from .helpers import GradCapture

bnb = pytest.importorskip("bitsandbytes")


def quantized_lora(tiny_model_config, workaround: bool = True):
    from peft import LoraConfig, get_peft_model

    from ember.models.adapters import apply_method, quantization_config
    from ember.models.loading import load_model

    model = load_model(tiny_model_config, quantization_config=quantization_config(MethodConfig(type="qlora"),
                                                                                   torch.float32))
    assert sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules()) == 14  # 7 projections × 2 layers
    if workaround:
        return apply_method(model, MethodConfig(type="qlora", rank=4, dropout=0.0), None)
    config = LoraConfig(r=4, target_modules="all-linear", lora_dropout=0.0, task_type="CAUSAL_LM")
    return get_peft_model(model, config)


def lora_grads(model, ids: torch.Tensor) -> dict[str, torch.Tensor | None]:
    model.train()
    model.zero_grad(set_to_none=True)
    model(input_ids=ids, labels=ids).loss.backward()
    return {n: (None if p.grad is None else p.grad.clone()) for n, p in model.named_parameters() if "lora_" in n}


def eval_pass(model, ids: torch.Tensor) -> None:
    model.eval()
    with torch.no_grad():
        model(input_ids=ids)


def test_lora_grads_survive_an_eval_pass(tiny_model_config):
    model = quantized_lora(tiny_model_config)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    before = lora_grads(model, ids)
    eval_pass(model, ids)
    after = lora_grads(model, ids)
    assert before and all(g is not None for g in after.values())
    for name, grad in before.items():
        torch.testing.assert_close(after[name], grad, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available() and not bnb.functional.has_avx512bf16(),
                    reason="the repacking happens only on CPUs with AVX512-BF16")
@pytest.mark.skipif(torch.cuda.is_available(), reason="a CPU-only bitsandbytes bug")
def test_the_bug_is_still_there_without_the_workaround(tiny_model_config):
    model = quantized_lora(tiny_model_config, workaround=False)
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    before = lora_grads(model, ids)
    assert all(g is not None for g in before.values())
    eval_pass(model, ids)
    after = lora_grads(model, ids)
    # The gradient through the frozen 4-bit weights is dropped: LoRA grads go missing (None) or come out wrong.
    assert any(g is None or not torch.allclose(g, before[n]) for n, g in after.items())


@pytest.mark.slow
def test_qlora_run_trains_through_evaluations(tiny_run_config):
    """nf4 tiny model, evaluated every other step: every LoRA parameter keeps its gradient, and loss falls."""
    cfg = tiny_run_config("method.type=qlora", "train.max_steps=6", "train.learning_rate=3e-2",
                          "data.eval_split=0.25", "train.eval_strategy=steps", "train.eval_steps=2")
    grads = GradCapture()
    result = train(cfg, callbacks=[grads])
    assert len(grads.steps) == 6
    for step in grads.steps:
        names = [n for n in step if "lora_" in n]
        assert len(names) == 4 * 7 and all(step[n].abs().sum() > 0 for n in names if "lora_A" not in n)
    history = json.loads((result.output_dir / "trainer_state.json").read_text())["log_history"]
    evals = [h["eval_loss"] for h in history if "eval_loss" in h]
    assert len(evals) >= 3 and evals[-1] < evals[0] - 0.05, evals
    assert (result.output_dir / "adapter_model.safetensors").is_file()


def test_8bit_lora_starts_from_the_bitsandbytes_loss_and_trains(tiny_run_config, tmp_path):
    """method.bits=8: step 1's loss is the int8 base's loss on the same batch, computed with plain transformers +
    bitsandbytes (LoRA starts as a no-op), and at step 2 every LoRA parameter has a non-zero gradient."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from ember.data.collate import PadCollator
    from ember.models.loading import load_model, load_tokenizer
    from ember.training.losses import causal_lm_loss
    from ember.training.prepare import prepare_data

    from .helpers import logged_losses, saved_tensors

    cfg = tiny_run_config("method.type=qlora", "method.bits=8", "train.max_steps=2",
                          "train.per_device_train_batch_size=8", "train.learning_rate=1e-2")
    samples = prepare_data(cfg, progress=False).data.train
    grads = GradCapture()
    result = train(cfg, callbacks=[grads])

    load_model(cfg.model, vocab_size=len(load_tokenizer(cfg.model))).save_pretrained(tmp_path / "fp32")
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "fp32", dtype=torch.float32, device_map={"": "cpu"},
                                                quantization_config=BitsAndBytesConfig(load_in_8bit=True))
    assert sum(isinstance(m, bnb.nn.Linear8bitLt) for m in base.modules()) == 14
    batch = PadCollator(pad_token_id=0)([{"input_ids": s.input_ids, "labels": s.labels} for s in samples])
    with torch.no_grad():
        logits = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference = float(causal_lm_loss(logits, batch["labels"]))
    losses = logged_losses(result.output_dir)
    # Measured 3.0e-4 apart (10.86046 vs 10.86076): bitsandbytes' int8 matmul quantizes activations and picks
    # outlier columns over the whole batch as it reaches each layer, so padding/layout differences show up here.
    assert len(losses) == 2 and abs(losses[0] - reference) <= 1e-3, (losses, reference)
    assert losses[1] < losses[0]
    step = grads.steps[1]
    assert len(step) == 2 * 7 * 2 and all("lora_" in n and g.abs().sum() > 0 for n, g in step.items())
    assert all(t.abs().sum() > 0 for n, t in saved_tensors(result.output_dir).items() if "lora_B" in n)


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="reads Linux's /proc/self/maps")
def test_a_quantized_load_does_not_keep_the_checkpoint_mapped(tiny_model_config, tmp_path):
    """transformers memory-maps the checkpoint and leaves the unquantized weights (embeddings, norms) as views of
    it, which would keep every page that quantizing read resident; the loader copies them, and the file is no
    longer mapped once the model is loaded, while the weights are those of the checkpoint."""
    import dataclasses

    from transformers import AutoModelForCausalLM

    from ember.models.adapters import quantization_config
    from ember.models.loading import load_model, load_tokenizer

    source = load_model(tiny_model_config, vocab_size=len(load_tokenizer(tiny_model_config)))
    source.save_pretrained(tmp_path / "tiny")
    local = dataclasses.replace(tiny_model_config, name_or_path=str(tmp_path / "tiny"), random_init=False,
                                config_overrides={})
    model = load_model(local, quantization_config=quantization_config(MethodConfig(type="qlora"), torch.float32))
    with open("/proc/self/maps", encoding="utf-8") as maps:
        assert not [line for line in maps if str(tmp_path) in line]
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "tiny")  # mapped, as transformers loads it
    assert torch.equal(model.get_input_embeddings().weight, saved.get_input_embeddings().weight)
    assert torch.equal(model.model.norm.weight, saved.model.norm.weight)
    with open("/proc/self/maps", encoding="utf-8") as maps:  # the check can see a mapping
        assert [line for line in maps if str(tmp_path) in line]
