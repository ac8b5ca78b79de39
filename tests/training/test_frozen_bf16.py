"""A LoRA run under bf16 autocast stores the frozen Linear weights in bf16 once: the same losses and gradients,
without casting them again on every step."""

from __future__ import annotations

import copy

import torch

from ember.models.adapters import store_frozen_linears_in


def _lora_model(tiny_run_config):
    from ember.models.adapters import apply_method
    from ember.models.loading import load_model

    cfg = tiny_run_config("method.dropout=0.0")
    model = load_model(cfg.model, vocab_size=49152)
    return apply_method(model, cfg.method, None, False)


def _loss_and_grads(model, ids):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    return loss.detach(), grads


def test_frozen_linears_in_bf16_give_the_same_loss_and_gradients(tiny_run_config):
    reference = _lora_model(tiny_run_config)
    with torch.no_grad():  # a LoRA update that is not zero, so B's gradient path is exercised too
        for name, p in reference.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02, generator=torch.Generator().manual_seed(3))
    cast = copy.deepcopy(reference)
    changed = store_frozen_linears_in(cast, torch.bfloat16)
    layers = cast.get_base_model().model.layers
    tied = cast.get_output_embeddings().weight is cast.get_input_embeddings().weight
    assert changed == 7 * len(layers) + (0 if tied else 1)  # q k v o gate up down of every layer, and an untied head
    assert layers[0].self_attn.q_proj.base_layer.weight.dtype == torch.bfloat16
    assert layers[0].self_attn.q_proj.lora_A["default"].weight.dtype == torch.float32  # trainable: fp32 master
    assert cast.get_input_embeddings().weight.dtype == torch.float32  # looked up, not autocast
    ids = torch.randint(0, 49152, (2, 24), generator=torch.Generator().manual_seed(0))
    loss_a, grads_a = _loss_and_grads(reference, ids)
    loss_b, grads_b = _loss_and_grads(cast, ids)
    assert torch.equal(loss_a, loss_b)
    assert grads_a.keys() == grads_b.keys() and all(torch.equal(grads_a[k], grads_b[k]) for k in grads_a)
