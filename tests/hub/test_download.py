"""ModelScope model ids: `modelscope:ORG/NAME` and `model.hub: modelscope` download through one seam (the network
call is replaced by a function that writes a tiny model), then load like a local directory."""

from __future__ import annotations

import sys

import pytest
import torch

from ember.config.schema import ModelConfig
from ember.errors import ConfigError
from ember.hub import download as hub_download

from tests.export.conftest import small_tokenizer, tiny_llama


@pytest.fixture
def fake_modelscope(monkeypatch, tmp_path):
    """DOWNLOADERS["modelscope"] replaced: records (repo id, revision) and writes a tiny Llama + tokenizer."""
    calls = []

    def fetch(repo_id, revision):
        calls.append((repo_id, revision))
        out = tmp_path / "modelscope" / repo_id
        if not out.exists():
            tok = small_tokenizer()
            tiny_llama(len(tok)).save_pretrained(out)
            tok.save_pretrained(out)
        return str(out)

    monkeypatch.setitem(hub_download.DOWNLOADERS, "modelscope", fetch)
    monkeypatch.setattr(hub_download, "_FETCHED", {})
    return calls


@pytest.mark.parametrize("config", [
    {"name_or_path": "modelscope:qwen/Tiny-Chat", "revision": "v1.0.2"},
    {"name_or_path": "qwen/Tiny-Chat", "hub": "modelscope", "revision": "v1.0.2"},
])
def test_modelscope_id_downloads_once_and_loads_from_the_returned_dir(fake_modelscope, tmp_path, config):
    from ember.models.loading import load_model, load_tokenizer

    cfg = ModelConfig(dtype="float32", **config)
    tok = load_tokenizer(cfg)
    model = load_model(cfg)
    assert fake_modelscope == [("qwen/Tiny-Chat", "v1.0.2")]  # config, tokenizer and weights: one download
    want = tiny_llama(len(small_tokenizer()))
    assert len(tok) == len(small_tokenizer())
    for (name, got), (_, ref) in zip(model.state_dict().items(), want.state_dict().items(), strict=True):
        assert torch.equal(got, ref), name


def test_resolve_source_per_hub(fake_modelscope, tmp_path):
    from ember.models.loading import resolve_source

    assert resolve_source("qwen/Tiny-Chat") == "qwen/Tiny-Chat"  # Hugging Face ids stay ids (transformers fetches)
    assert resolve_source("qwen/Tiny-Chat", "modelscope") == str(tmp_path / "modelscope" / "qwen/Tiny-Chat")
    assert resolve_source("modelscope:qwen/Tiny-Chat", "huggingface") == str(tmp_path / "modelscope/qwen/Tiny-Chat")
    local = tmp_path / "modelscope" / "qwen" / "Tiny-Chat"
    assert resolve_source(str(local), "modelscope") == str(local)  # a local directory is local on every hub
    assert fake_modelscope == [("qwen/Tiny-Chat", None)]
    with pytest.raises(ConfigError, match=r"modelscope:qwen is not a modelscope model id: write modelscope:ORG/NAME"):
        resolve_source("modelscope:qwen")


def test_the_modelscope_call_itself(monkeypatch):
    """The seam calls modelscope's public `snapshot_download(repo_id, revision=...)` (its own cache: no cache_dir)."""
    modelscope = pytest.importorskip("modelscope")
    seen = []
    monkeypatch.setattr(modelscope, "snapshot_download", lambda *a, **k: seen.append((a, k)) or "/cache/x")
    assert hub_download._modelscope_download("qwen/Tiny-Chat", "master") == "/cache/x"
    assert seen == [(("qwen/Tiny-Chat",), {"revision": "master"})]


def test_missing_modelscope_package_says_how_to_install(monkeypatch):
    from ember.config import validate
    from ember.config.schema import DataConfig, DatasetSpec, EmberConfig

    monkeypatch.setitem(sys.modules, "modelscope", None)  # import fails, find_spec says absent
    monkeypatch.setattr(hub_download, "_FETCHED", {})
    with pytest.raises(ConfigError) as err:
        hub_download.download("modelscope", "qwen/Tiny-Chat")
    assert str(err.value) == ("the model 'qwen/Tiny-Chat' is on ModelScope, which needs the modelscope package: "
                              "pip install 'ember[modelscope]' (the modelscope package)")
    cfg = EmberConfig(model=ModelConfig(name_or_path="modelscope:qwen/Tiny-Chat"),
                      data=DataConfig(datasets=[DatasetSpec(path="x.jsonl")]))
    with pytest.raises(ConfigError, match=r"needs the modelscope package: pip install 'ember\[modelscope\]'"):
        validate(cfg)


def test_card_base_model_and_offline_check_per_hub(monkeypatch):
    from ember.models.loading import check_reachable, hub_model_id

    assert hub_model_id(ModelConfig(name_or_path="modelscope:qwen/Tiny-Chat")) == "qwen/Tiny-Chat"
    assert hub_model_id(ModelConfig(name_or_path="qwen/Tiny-Chat", hub="modelscope")) == "qwen/Tiny-Chat"
    assert hub_model_id(ModelConfig(name_or_path="smollm2-135m-instruct")) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_model_id(ModelConfig(name_or_path="HuggingFaceTB/SmolLM2-360M")) == "HuggingFaceTB/SmolLM2-360M"
    assert hub_model_id(ModelConfig(name_or_path="/no/such/dir")) is None
    check_reachable(ModelConfig(name_or_path="modelscope:qwen/Tiny-Chat"))  # not a Hugging Face cache question
    check_reachable(ModelConfig(name_or_path="qwen/Tiny-Chat", hub="modelscope"))
