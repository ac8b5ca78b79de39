"""Loading for chat, serve, eval and export: a missing run directory that reads as a hub id fails in one line;
hub ids that can be had still load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import huggingface_hub.constants
import pytest

from ember.cli import main
from ember.errors import ConfigError
from ember.inference.loading import load_for_inference


@pytest.mark.parametrize("command", [
    ["chat", "--prompt", "hi"],
    ["serve", "--port", "0"],
    ["export", "--to", "exported"],
    ["eval", "gen", "--data", "data.jsonl", "--out", "ev"],
])
def test_a_missing_run_directory_is_one_line_naming_it(command, tmp_path, monkeypatch, capsys):
    """`runs/nonexist` has the shape of a hub id; offline and not cached, it once ended in a 100-line traceback."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    (tmp_path / "data.jsonl").write_text(json.dumps({"prompt": "q", "reference": "a"}) + "\n", encoding="utf-8")

    assert main([*command, "--model", "runs/nonexist"]) == 2
    assert capsys.readouterr().err == (
        "error: --model=runs/nonexist is the hub repository runs/nonexist, but the hub is switched off "
        f"(HF_HUB_OFFLINE=1) and it is not in the local cache ({huggingface_hub.constants.HF_HUB_CACHE}): download "
        "it once with the network on (huggingface-cli download runs/nonexist), or give a local directory (there is "
        f"none at {Path.cwd() / 'runs' / 'nonexist'})\n")


def test_a_hub_id_the_hub_does_not_have_is_one_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    def hub_answer(cfg):  # what transformers raises when the hub has no such repository
        raise OSError(f"{cfg.name_or_path} is not a local folder and is not a valid model identifier listed on "
                      "'https://huggingface.co/models'\nIf this is a private repository, make sure to pass a token")

    monkeypatch.setattr("ember.models.loading.load_tokenizer", hub_answer)
    with pytest.raises(ConfigError) as caught:
        load_for_inference("runs/nonexist")
    assert str(caught.value) == (
        f"--model=runs/nonexist: there is no local directory {Path.cwd() / 'runs' / 'nonexist'}, and the hub "
        "repository runs/nonexist could not be loaded (runs/nonexist is not a local folder and is not a valid model "
        "identifier listed on 'https://huggingface.co/models'); give an existing run or model directory, or a hub "
        "id you can access")


def test_a_cached_hub_id_still_loads_offline(tiny_llm_dir, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    snapshot = cache / "models--acme--tiny" / "snapshots" / "0123abc"
    shutil.copytree(tiny_llm_dir, snapshot)
    (cache / "models--acme--tiny" / "refs").mkdir()
    (cache / "models--acme--tiny" / "refs" / "main").write_text("0123abc")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    loaded = load_for_inference("acme/tiny", dtype="float32")
    assert loaded.name == "acme/tiny"
    assert loaded.model.config.num_hidden_layers == 2
