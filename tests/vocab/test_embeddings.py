"""Model side: resized embeddings/lm_head, new rows = mean of the base pieces' rows (exactly), padding, tying."""

from __future__ import annotations

import json

import pytest
import torch

from ember.vocab.embeddings import base_piece_ids, padded_size, resize_and_init
from ember.vocab.merge import extend_tokenizer_json


def test_padded_size():
    assert [padded_size(n) for n in (1, 64, 65, 49152, 49153)] == [64, 64, 128, 49152, 49216]
    assert padded_size(100, multiple=1) == 100


@pytest.fixture(scope="module")
def smol_extension(smol_json, smol_pieces):
    return extend_tokenizer_json(smol_json, smol_pieces)


@pytest.mark.parametrize("tied", [True, False])
def test_new_rows_are_the_mean_of_the_old_pieces(tied, tiny_model_config, smol_tokenizer, smol_extension):
    from ember.models.loading import load_model

    tiny_model_config.config_overrides["tie_word_embeddings"] = tied
    model = load_model(tiny_model_config, vocab_size=len(smol_tokenizer))
    old_embed = model.get_input_embeddings().weight.detach().clone()
    old_head = model.get_output_embeddings().weight.detach().clone()
    assert (model.get_output_embeddings().weight is model.get_input_embeddings().weight) == tied

    result = smol_extension
    symbols = [s for _, s in result.added]
    pieces = base_piece_ids(smol_tokenizer.backend_tokenizer, symbols)
    new_size = result.base_size + result.new_tokens
    rows = resize_and_init(model, list(zip([i for i, _ in result.added], pieces, strict=True)), new_size, len(smol_tokenizer))

    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    assert rows == padded_size(new_size) and rows % 64 == 0 and rows >= new_size
    assert embed.shape[0] == head.shape[0] == rows == model.config.vocab_size
    assert (head is embed) == tied
    assert torch.equal(embed[: len(smol_tokenizer)], old_embed)  # base rows untouched
    assert torch.equal(head[: len(smol_tokenizer)], old_head)
    checked_text = 0
    for (token_id, symbol), ids in zip(result.added, pieces, strict=True):
        assert len(ids) >= 2
        text = smol_tokenizer.backend_tokenizer.decoder.decode([symbol])
        if "\ufffd" not in text:  # whole characters: the pieces are what ordinary encoding of the text gives
            assert ids == smol_tokenizer(text, add_special_tokens=False).input_ids
            checked_text += 1
        assert torch.equal(embed[token_id], old_embed[ids].mean(dim=0))
        assert torch.equal(head[token_id], old_head[ids].mean(dim=0))
    assert checked_text >= 50
    pad_row = old_embed.mean(dim=0)
    assert all(torch.equal(embed[i], pad_row) for i in range(new_size, rows))


def test_extend_cli_writes_a_loadable_model(sp_dir, sp_pieces, tmp_path, tiny_model_config):
    """SentencePiece-style base + untied tiny model, through `ember vocab extend`, reloaded with plain transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ember.config.schema import ModelConfig
    from ember.models.loading import load_model
    from ember.cli import main
    from ember.vocab.pieces import save_pieces

    base_tok = AutoTokenizer.from_pretrained(sp_dir)
    cfg = ModelConfig(**{**tiny_model_config.__dict__, "tokenizer": sp_dir})
    model = load_model(cfg, vocab_size=len(base_tok))
    model_dir = tmp_path / "base-model"
    model.save_pretrained(model_dir)
    base_tok.save_pretrained(model_dir)
    save_pieces(tmp_path / "pieces", sp_pieces, {})
    out = tmp_path / "extended"

    assert main(["vocab", "extend", "--base", str(model_dir), "--pieces", str(tmp_path / "pieces"), "--out", str(out)]) == 0

    tok = AutoTokenizer.from_pretrained(out)
    new = AutoModelForCausalLM.from_pretrained(out)
    record = json.loads((out / "ember_vocab.json").read_text())
    n_new = len(tok) - len(base_tok)
    assert n_new > 0
    assert {k: record[k] for k in ("base_vocab", "new_tokens", "padded_vocab")} == {
        "base_vocab": len(base_tok), "new_tokens": n_new, "padded_vocab": padded_size(len(tok))}
    assert new.get_input_embeddings().weight.shape[0] == record["padded_vocab"]
    assert new.get_output_embeddings().weight is not new.get_input_embeddings().weight
    old_embed = model.get_input_embeddings().weight
    old_head = model.get_output_embeddings().weight
    # "国" was three byte-fallback tokens in the base; its new row is the mean of those three rows.
    byte_ids = base_tok.convert_tokens_to_ids(["<0xE5>", "<0x9B>", "<0xBD>"])
    guo = tok.convert_tokens_to_ids("国")
    assert guo >= len(base_tok)
    assert torch.equal(new.get_input_embeddings().weight[guo], old_embed[byte_ids].mean(dim=0))
    assert torch.equal(new.get_output_embeddings().weight[guo], old_head[byte_ids].mean(dim=0))
    ids = tok("中国的首都", add_special_tokens=False, return_tensors="pt").input_ids
    assert new(ids).logits.shape[-1] == record["padded_vocab"]
