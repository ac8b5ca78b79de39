"""The merged directory reads the same in transformers 4.46 (what many vLLM / TGI installs pin) as in transformers 5:
same tokenizer ids, chat template, special tokens, logits and greedy tokens.

transformers 4.46.3 (+ tokenizers 0.20.3, huggingface_hub 0.36.2) is installed once with pip into
$EMBER_CACHE/peers/ — never into the project venv — and put first on PYTHONPATH of a subprocess whose torch and other
packages come from the project venv. The model is SmolLM2-shaped with rope_theta 100000, so a reader that falls
back to the default 10000 (transformers 4.x without the top-level `rope_theta`) gives visibly different logits.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .conftest import export_cli, save_adapter, small_tokenizer, tiny_llama

PEER_PACKAGES = ("transformers==4.46.3", "tokenizers==0.20.3", "huggingface-hub==0.36.2")
TEXTS = ["Hello there, how are you? 你好 <|im_end|> Paris. 1 + 1 = 2", "<tool>call</tool> <|sep|> hello"]
CHAT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
        {"role": "assistant", "content": "I am fine."}, {"role": "user", "content": "你好"}]

SCRIPT = r"""
import json, sys, torch, transformers
from transformers import AutoModelForCausalLM, AutoTokenizer
texts, chat = json.loads(sys.argv[2]), json.loads(sys.argv[3])
out = {}
for d in sys.argv[1].split(","):
    tok = AutoTokenizer.from_pretrained(d)
    model = AutoModelForCausalLM.from_pretrained(d)  # no dtype: the config's own, as a server would load it
    prompt = tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0]
        new = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):]
    out[d] = {"version": transformers.__version__, "prompt": prompt, "ids": [tok(t)["input_ids"] for t in texts],
              "decoded": [tok.decode(tok(t)["input_ids"]) for t in texts],
              "special": {k: getattr(tok, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")},
              "all_special": sorted(tok.all_special_tokens),
              "added": tok.convert_tokens_to_ids(["<tool>", "</tool>", "<|sep|>"]), "size": len(tok), "dtype": str(model.dtype),
              "logits": logits.tolist(), "new": new.tolist(), "eos": model.generation_config.eos_token_id}
print("RESULT " + json.dumps(out))
"""


def peer_transformers4() -> Path:
    """transformers 4.46.3 in its own folder (created once, reused): pip --target, never the project venv."""
    from ember.core.paths import cache_root, file_lock

    peers = cache_root() / "peers"
    target = peers / "transformers-4.46.3"
    with file_lock(peers / "transformers-4.46.3.lock"):
        if not (target / "transformers" / "__init__.py").is_file():
            partial = peers / "transformers-4.46.3.partial"
            shutil.rmtree(partial, ignore_errors=True)
            # --no-deps: everything else transformers 4.46 needs (numpy, regex, safetensors, ...) is in the venv
            run = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target",
                                  str(partial), *PEER_PACKAGES], capture_output=True, text=True, timeout=600)
            assert run.returncode == 0, f"pip install {' '.join(PEER_PACKAGES)} failed:\n{run.stderr[-2000:]}"
            partial.rename(target)
    return target


def read_with(directories: list[Path], pythonpath: str | None) -> dict:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if pythonpath:
        env["PYTHONPATH"] = pythonpath
    run = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(map(str, directories)), json.dumps(TEXTS),
                          json.dumps(CHAT)], capture_output=True, text=True, timeout=300, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    line = next(x for x in run.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> list[Path]:
    """Merged exports of a rope_theta=1e5 tiny Llama + LoRA: one plain, one with an extended vocabulary."""
    from transformers import AddedToken

    root = tmp_path_factory.mktemp("portable")
    tok = small_tokenizer()
    tiny_llama(len(tok), rope_theta=100000.0).save_pretrained(root / "base")
    tok.save_pretrained(root / "base")
    save_adapter(tiny_llama(len(tok), rope_theta=100000.0), tok, root / "lora")
    tok.add_tokens([AddedToken("<tool>", normalized=False), AddedToken("</tool>", normalized=False)])
    tok.add_special_tokens({"additional_special_tokens": ["<|sep|>"]})
    model = tiny_llama(len(small_tokenizer()), rope_theta=100000.0)
    model.resize_token_embeddings(len(tok), pad_to_multiple_of=64)
    save_adapter(model, tok, root / "ext_lora", ["embed_tokens", "lm_head"])
    export_cli("--model", str(root / "base"), "--adapter", str(root / "lora"), "--to", str(root / "merged"))
    export_cli("--model", str(root / "base"), "--adapter", str(root / "ext_lora"), "--to", str(root / "ext_merged"))
    return [root / "merged", root / "ext_merged"]


def test_config_carries_legacy_fields_beside_rope_parameters(exports):
    config = json.loads((exports[0] / "config.json").read_text())
    assert config["rope_parameters"] == {"rope_theta": 100000.0, "rope_type": "default"}
    assert (config["rope_theta"], config["rope_scaling"], config["torch_dtype"]) == (100000.0, None, "float32")
    token_config = json.loads((exports[1] / "tokenizer_config.json").read_text())
    assert token_config["tokenizer_class"] == "PreTrainedTokenizerFast"
    assert token_config["additional_special_tokens"] == ["<|sep|>"]
    assert token_config["chat_template"] == (exports[1] / "chat_template.jinja").read_text()


def test_legacy_rope_scaling_for_non_default_rope():
    from ember.export.portable import legacy_config_fields

    llama3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}
    assert legacy_config_fields({"rope_parameters": llama3, "dtype": "bfloat16"}) == {
        "torch_dtype": "bfloat16", "rope_theta": 500000.0,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192}}


@pytest.mark.slow
def test_transformers_4_and_5_read_the_export_identically(exports):
    """Slow (~30 s; the first run also pip-installs transformers 4.46.3, ~30 MB): two fresh interpreters."""
    import transformers

    new = read_with(exports, None)
    old = read_with(exports, str(peer_transformers4()))
    for d in map(str, exports):
        assert (old[d]["version"], new[d]["version"]) == ("4.46.3", transformers.__version__)
        for key in ("prompt", "ids", "decoded", "special", "all_special", "added", "size", "dtype", "new", "eos"):
            assert old[d][key] == new[d][key], key
        diff = (torch.tensor(old[d]["logits"]) - torch.tensor(new[d]["logits"])).abs().max().item()
        assert diff <= 1e-5
    assert new[str(exports[0])]["decoded"][0] == TEXTS[0] and "<|sep|>" in new[str(exports[1])]["all_special"]
    added = new[str(exports[1])]["added"]
    assert set(added) <= set(new[str(exports[1])]["ids"][1]) and len(set(added)) == 3  # added tokens stay whole

    # The check has teeth: the same weights read with rope_theta 10000 (4.x's fallback) give other logits.
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(exports[0])
    config.rope_parameters["rope_theta"] = 10000.0
    wrong = AutoModelForCausalLM.from_pretrained(exports[0], config=config)
    ids = torch.tensor([new[str(exports[0])]["ids"][0]])
    with torch.no_grad():
        assert (wrong(ids).logits[0, -1] - AutoModelForCausalLM.from_pretrained(exports[0])(ids).logits[0, -1]
                ).abs().max().item() > 0.1
