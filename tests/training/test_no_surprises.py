"""No silent surprises: a warmup longer than the run warns, template tokens the model lacks are announced and only
their rows train, and loggers, uploads and hub ids that cannot work fail as config errors before anything loads."""

from __future__ import annotations

import pytest
import torch
import yaml

from ember.config import load_config, to_dict
from ember.errors import ConfigError
from ember.training.run import train

from .test_config_errors import _config, hide_module, nothing_loads  # noqa: F401 (a fixture)

CHATGLM3_TOKENS = "[gMASK], sop, <|system|>, <|user|>, <|assistant|>, <|observation|>"


class Loaded(Exception):
    """Raised instead of loading the weights: everything said before it was said before training."""


@pytest.fixture
def stop_at_weights(monkeypatch):
    def load_model(*args, **kwargs):
        raise Loaded

    monkeypatch.setattr("ember.models.loading.load_model", load_model)


@pytest.mark.parametrize("overrides, expected", [
    (["train.warmup_steps=100", "train.max_steps=2"],
     "warning: train.warmup_steps=100 is 100 steps but the run has 2 optimizer steps: the learning rate never reaches "
     "train.learning_rate=0.001 (at most 2e-05); lower the warmup or train longer"),
    # 8 samples / batch 2 = 4 steps an epoch
    (["train.warmup_steps=4", "train.max_steps=-1", "train.num_train_epochs=1"],
     "warning: train.warmup_steps=4 is 4 steps but the run has 4 optimizer steps"),
    (["train.warmup_ratio=0.9", "train.max_steps=1"], "warning: train.warmup_ratio=0.9 is 1 steps but the run has 1"),
])
def test_a_warmup_longer_than_the_run_warns_before_training(tiny_run_config, stop_at_weights, capsys, overrides,
                                                            expected):
    with pytest.raises(Loaded):
        train(tiny_run_config(*overrides))
    assert expected in capsys.readouterr().out


def test_a_warmup_within_the_run_says_nothing(tiny_run_config, stop_at_weights, capsys):
    with pytest.raises(Loaded):
        train(tiny_run_config("train.warmup_steps=3", "train.max_steps=4"))
    assert "warning: train.warmup" not in capsys.readouterr().out


def chatglm3_on_smollm2(tiny_run_config, *overrides):
    """The tiny Llama with SmolLM2's 49,152-token vocabulary (and tokenizer) and ChatGLM3's template: 6 new tokens."""
    return tiny_run_config("data.template=chatglm3", "model.config_overrides.vocab_size=49152", *overrides)


def test_data_preview_says_which_template_tokens_the_model_lacks(tiny_run_config, tmp_path, capsys):
    from ember.cli import main

    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(to_dict(chatglm3_on_smollm2(tiny_run_config))), encoding="utf-8")
    assert main(["data", "preview", str(path), "--n", "1"]) == 0
    assert (f"warning: data.template=chatglm3 uses 6 special token(s) this tokenizer does not have ({CHATGLM3_TOKENS}): "
            "the model never saw them, so their embeddings start untrained") in capsys.readouterr().out


def test_missing_template_tokens_train_only_their_rows_and_serve_exactly(tiny_run_config, capsys):
    from ember.core.artifacts import RUN_CONFIG
    from ember.inference.loading import load_for_inference

    from .helpers import saved_tensors

    cfg = chatglm3_on_smollm2(tiny_run_config)
    result = train(cfg)
    out = capsys.readouterr().out
    assert f"warning: data.template=chatglm3 uses 6 special token(s) this tokenizer does not have ({CHATGLM3_TOKENS})" in out
    # 49,158 tokens: resized to 49,216 rows (a multiple of 64); all 64 new rows train, the padding ones too, so what
    # is served does not depend on how the resize drew them.
    assert "training only the 64 new embedding rows (ids 49152..49215) of embed_tokens and lm_head" in out
    tensors = saved_tensors(result.output_dir)
    delta = {k: v for k, v in tensors.items() if "trainable_tokens_delta" in k}
    assert sorted(delta) == ["base_model.model.lm_head.token_adapter.trainable_tokens_delta",
                             "base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"]
    assert all(v.shape == (64, 64) for v in delta.values())
    assert not any("modules_to_save" in k for k in tensors)
    lora = sum(v.numel() for k, v in tensors.items() if "lora_" in k)
    assert result.trainable_params == lora + 2 * 64 * 64  # not the 2 x 49,216 x 64 of whole matrices
    # The config is not changed behind the user's back: what was saved is what ran.
    assert cfg.method.modules_to_save == []
    assert load_config(result.output_dir / RUN_CONFIG) == cfg

    # Served: the new rows are the trained ones, whatever the resize at load time draws.
    ids = torch.arange(49152, 49216)
    rows = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        loaded = load_for_inference(str(result.output_dir), dtype="float32")
        rows.append(loaded.model.get_input_embeddings()(ids).detach())
    torch.testing.assert_close(rows[0], rows[1], rtol=0, atol=0)
    torch.testing.assert_close(rows[0], delta["base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta"],
                               rtol=0, atol=0)


def test_asking_for_whole_embedding_matrices_still_trains_them(tiny_run_config, capsys):
    from .helpers import saved_tensors

    result = train(chatglm3_on_smollm2(tiny_run_config, "method.modules_to_save=[embed_tokens, lm_head]"))
    assert "training only the" not in capsys.readouterr().out
    tensors = saved_tensors(result.output_dir)
    assert not any("trainable_tokens" in k for k in tensors)
    lora = sum(v.numel() for k, v in tensors.items() if "lora_" in k)
    assert result.trainable_params == lora + 2 * 49216 * 64


@pytest.mark.parametrize("overrides, message", [
    (["train.report_to=wandb"], r"train.report_to=wandb needs the 'wandb' package, which is not installed: "
                                r"pip install wandb \(or train.report_to=none\)"),
    (["train.report_to=[tensorboard, wandb]"], "train.report_to=wandb needs the 'wandb' package"),
    (["train.report_to=wandbb"], "train.report_to: 'wandbb' is not a logger transformers knows; choose from "
                                 "azure_ml, clearml, "),
    (["train.extra={push_to_hub: true}"], r"train.extra.push_to_hub: the Trainer's own upload is not used .*; set "
                                          r"output.push_to_hub: ORG/NAME instead"),
    (["model.name_or_path=nobody/not-cached", "model.random_init=false"],
     r"model.name_or_path=nobody/not-cached is the hub repository nobody/not-cached, but the hub is switched off "
     r"\(HF_HUB_OFFLINE=1\) and it is not in the local cache \(.*\): download it once with the network on "
     r"\(huggingface-cli download nobody/not-cached\), or give a local directory"),
    (["model.tokenizer=nobody/tokenizer"], "model.tokenizer=nobody/tokenizer is the hub repository nobody/tokenizer"),
])
def test_what_cannot_work_fails_before_anything_loads(tiny_run_config, nothing_loads, monkeypatch, overrides,  # noqa: F811
                                                      message):
    import huggingface_hub.constants

    hide_module(monkeypatch, "wandb")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError, match=message):
        train(_config(tiny_run_config, overrides))


def test_tied_embeddings_share_the_trained_rows(tiny_run_config, tiny_llm_dir):
    from .helpers import saved_tensors

    # SmolLM2's case: embed_tokens and lm_head are one matrix, so the new rows are one set of parameters.
    result = train(tiny_run_config("data.template=chatglm3", f"model.name_or_path={tiny_llm_dir}",
                                   "model.random_init=false", "model.config_overrides={}"))
    tensors = saved_tensors(result.output_dir)
    lora = sum(v.numel() for k, v in tensors.items() if "lora_" in k)
    assert result.trainable_params == lora + 64 * 64
    head, embed = (tensors[f"base_model.model.{name}.token_adapter.trainable_tokens_delta"]
                   for name in ("lm_head", "model.embed_tokens"))
    assert torch.equal(head, embed)
