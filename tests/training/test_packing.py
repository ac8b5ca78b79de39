"""Padding-free packing gives the same loss and gradients as padded batches (samples never see each other)."""

from __future__ import annotations

import torch

from ember.data.collate import PackedCollator, PadCollator
from ember.models.loading import load_model
from ember.training.losses import causal_lm_loss

from .helpers import varlen_stand_in


def _rows() -> list[dict]:
    torch.manual_seed(0)
    rows = []
    for n in (7, 12, 5):
        ids = torch.randint(3, 400, (n,)).tolist()
        labels = [-100] * (n // 2) + ids[n // 2:]
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def _loss_and_grads(model, batch) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    labels = batch.pop("labels")
    logits = model(**batch, use_cache=False).logits
    loss = causal_lm_loss(logits, labels)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def test_packed_batch_equals_padded_batch(tiny_model_config):
    tiny_model_config.attn_implementation = "sdpa"
    model = load_model(tiny_model_config, vocab_size=512)
    rows = _rows()
    padded = PadCollator(pad_token_id=0)(rows)
    packed = PackedCollator()(rows)
    assert packed["input_ids"].shape == (1, 24)
    assert packed["position_ids"].tolist() == [list(range(7)) + list(range(12)) + list(range(5))]
    assert "attention_mask" not in packed
    # The first token of each sample is never a target; the trained-token counts agree.
    assert int(packed["labels"][..., 1:].ne(-100).sum()) == int(padded["labels"][..., 1:].ne(-100).sum())
    loss_pad, grads_pad = _loss_and_grads(model, padded)
    loss_pack, grads_pack = _loss_and_grads(model, packed)
    assert torch.allclose(loss_pad, loss_pack, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_pad, grads_pack, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_segment_attention_equals_padded_batch_and_restores_sdpa(tiny_model_config):
    from ember.models.segment_attention import segment_attention, segment_bounds

    tiny_model_config.attn_implementation = "sdpa"
    model = load_model(tiny_model_config, vocab_size=512)
    rows = _rows()
    loss_pad, grads_pad = _loss_and_grads(model, PadCollator(pad_token_id=0)(rows))
    packed = PackedCollator()(rows)
    assert segment_bounds(packed["position_ids"]) == [[(0, 7), (7, 19), (19, 24)]]
    with segment_attention(model) as switched:
        assert switched and model.config._attn_implementation == "ember_segments"
        loss_seg, grads_seg = _loss_and_grads(model, dict(packed))
    assert model.config._attn_implementation == "sdpa"
    assert torch.allclose(loss_pad, loss_seg, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_pad, grads_seg, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


def test_segment_attention_refuses_a_row_it_cannot_split():
    import pytest

    from ember.models.segment_attention import segment_sdpa

    q = torch.zeros(1, 2, 6, 8)
    # no position_ids reached the attention: samples could see each other, so it stops
    with pytest.raises(RuntimeError, match="data.packing: false"):
        segment_sdpa(torch.nn.Module(), q, q, q, None)
    with pytest.raises(RuntimeError, match="a mask"):
        segment_sdpa(torch.nn.Module(), q, q, q, torch.ones(1, 1, 6, 6), position_ids=torch.arange(6)[None])


def test_on_a_cpu_segment_attention_attends_in_float32_under_bf16_autocast():
    """Each sample's attention is float32 SDPA of the inputs as they came (autocast would have run it in bf16), the
    output cast back to the query's dtype; gradients reach q, k and v in their own dtypes."""
    import torch.nn.functional as F

    from ember.models.segment_attention import segment_sdpa

    torch.manual_seed(0)
    # as a Llama layer hands them over under autocast: q, k float32 (rotary), v bf16; 4 query heads, 2 kv heads
    q = torch.randn(1, 4, 10, 8, requires_grad=True)
    k = torch.randn(1, 2, 10, 8, requires_grad=True)
    v = torch.randn(1, 2, 10, 8, dtype=torch.bfloat16, requires_grad=True)
    position_ids = torch.tensor([[0, 1, 2, 3, 0, 1, 2, 3, 4, 5]])  # two samples: 4 and 6 tokens
    module = torch.nn.Module()
    module.num_key_value_groups = 2  # what transformers' sdpa_attention_forward reads off an attention layer
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = segment_sdpa(module, q, k, v, None, position_ids=position_ids)
        in_bf16 = F.scaled_dot_product_attention(q[:, :, :4], k[:, :, :4], v[:, :, :4], is_causal=True, enable_gqa=True)
    assert out.dtype == torch.float32 and out.shape == (1, 10, 4, 8)  # [B, T, heads, dim], as transformers returns
    assert in_bf16.dtype == torch.bfloat16  # what autocast alone would have run
    expected = torch.cat([F.scaled_dot_product_attention(q[:, :, s:e], k[:, :, s:e], v[:, :, s:e].float(),
                                                         is_causal=True, enable_gqa=True) for s, e in ((0, 4), (4, 10))],
                         dim=2).transpose(1, 2)
    assert torch.equal(out, expected)
    out.sum().backward()
    assert q.grad.dtype == k.grad.dtype == torch.float32 and v.grad.dtype == torch.bfloat16
    assert torch.count_nonzero(v.grad[:, :, 4:]) > 0  # the second sample's values got their gradient

    q16, k16, v16 = q.detach().bfloat16(), k.detach().bfloat16(), v.detach()  # a bf16 model, no autocast
    out16, _ = segment_sdpa(module, q16, k16, v16, None, position_ids=position_ids)
    second = F.scaled_dot_product_attention(q16[:, :, 4:].float(), k16[:, :, 4:].float(), v16[:, :, 4:].float(),
                                            is_causal=True, enable_gqa=True)
    assert out16.dtype == torch.bfloat16
    assert torch.equal(out16[:, 4:], second.transpose(1, 2).bfloat16())


def test_auto_packing_where_the_attention_keeps_packed_samples_apart(tiny_model_config):
    """`data.packing: null` packs where a packed row needs no block mask: SDPA (run sample by sample) and the
    flash-attention kernels (their variable-length path takes the samples' boundaries); eager attention and
    image-text models keep padded rows, as do preference stages (stage_packs False). An explicit setting wins."""
    import dataclasses
    from types import SimpleNamespace

    from ember.config.schema import EmberConfig
    from ember.models.segment_attention import packed_row_attention, segment_attention
    from ember.training.run import _packing

    model = load_model(dataclasses.replace(tiny_model_config, attn_implementation="sdpa"), vocab_size=512)
    auto, never = EmberConfig(), EmberConfig()
    never.data.packing = False
    found = {}
    # flash_attn is not installed here: the model keeps SDPA kernels, its config names the implementation asked for
    for implementation in ("sdpa", "flash_attention_2", "flash_attention_3", "kernels-community/flash-attn2", "eager"):
        model.config._attn_implementation = implementation
        attention = packed_row_attention(model)
        found[implementation] = (attention, _packing(auto, attention, True), _packing(auto, attention, False))
        assert _packing(never, attention, True) is False
        with segment_attention(model) as switched:  # only SDPA is run sample by sample by Ember
            assert switched is (attention == "segments")
    assert found == {"sdpa": ("segments", True, False), "flash_attention_2": ("flash", True, False),
                     "flash_attention_3": ("flash", True, False), "kernels-community/flash-attn2": ("flash", True, False),
                     "eager": (None, False, False)}
    image_text = SimpleNamespace(_supports_attention_backend=True,
                                 config=SimpleNamespace(_attn_implementation="flash_attention_2", vision_config={}))
    assert packed_row_attention(image_text) is None
    assert packed_row_attention(model, "flash_attention_2") == "flash"  # the planner's stand-in for the model's own


def test_flash_kwargs_carry_the_sample_boundaries_to_every_layer(tiny_model_config):
    """`PackedCollator(flash_kwargs=True)` hands over the boundaries as transformers' flash kernels take them
    (int32 cumulative lengths, the longest sample as an int); they reach each layer's attention through the model's
    forward, and attending between them gives the padded batch's loss and gradients."""
    import dataclasses

    from transformers import AttentionInterface

    rows = _rows()
    packed = PackedCollator(flash_kwargs=True)(rows)
    assert packed["cu_seq_lens_q"].dtype == torch.int32 and packed["cu_seq_lens_q"].tolist() == [0, 7, 19, 24]
    assert packed["cu_seq_lens_k"].tolist() == [0, 7, 19, 24] and packed["max_length_q"] == packed["max_length_k"] == 12
    assert not {"cu_seq_lens_q", "max_length_q"} & set(PackedCollator()(rows))
    from ember.training.stages import STAGES

    # what `ember train` asks of its stage for a flash-attention model (run.py: packed_row_attention == "flash")
    assert STAGES["sft"].collator(None, True, flash=True) == PackedCollator(flash_kwargs=True)
    assert STAGES["pt"].collator(None, True) == PackedCollator(flash_kwargs=False)
    model = load_model(dataclasses.replace(tiny_model_config, attn_implementation="sdpa"), vocab_size=512)
    loss_pad, grads_pad = _loss_and_grads(model, PadCollator(pad_token_id=0)(rows))
    calls = []
    AttentionInterface.register("ember_test_varlen", varlen_stand_in(calls))
    model.set_attn_implementation("ember_test_varlen")
    loss_varlen, grads_varlen = _loss_and_grads(model, packed)
    assert calls == [([0, 7, 19, 24], [0, 7, 19, 24], 12, 12)] * model.config.num_hidden_layers
    assert torch.allclose(loss_pad, loss_varlen, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads_pad, grads_varlen, strict=True):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
