"""Make a saved transformers directory read the same in transformers 4.45+ as in 5.x.

transformers 5 writes a few things under new names that 4.x readers (what many vLLM / TGI installs pin) do not know,
and two of them fail silently or loudly:

* config.json keeps RoPE settings only in `rope_parameters`; 4.x reads the top-level `rope_theta` and falls back to
  10000 when it is absent — SmolLM2's 100000 becomes 10000 and every logit after the first position is wrong.
* tokenizer_config.json names the class `TokenizersBackend`, which 4.x cannot import; the chat template lives only
  in chat_template.jinja (4.x before 4.47 reads it from tokenizer_config.json) and extra special tokens are
  `extra_special_tokens` (4.x: `additional_special_tokens`).

So the legacy fields are written beside the new ones, with the same values: `rope_theta` (+ `rope_scaling` for
non-default RoPE, + `partial_rotary_factor`), `torch_dtype`, `tokenizer_class: PreTrainedTokenizerFast` (both
versions map it to the class that runs tokenizer.json, which holds the whole tokenization), `chat_template` and
`additional_special_tokens`. tests/export/test_portable.py loads an export in transformers 4.46 and 5 and compares
ids, templates and logits.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ember.errors import ConfigError

log = logging.getLogger(__name__)

# Keys of a flat `rope_parameters` that 4.x configs kept at the top level.
_TOP_LEVEL_ROPE_KEYS = ("rope_theta", "partial_rotary_factor")


def legacy_config_fields(config: dict) -> dict:
    """The top-level fields a transformers 4.x config reader needs, derived from a transformers 5 config.json."""
    out = {"torch_dtype": config["dtype"]} if "dtype" in config and "torch_dtype" not in config else {}
    rope = config.get("rope_parameters")
    if isinstance(rope, dict) and rope:
        if any(isinstance(v, dict) for v in rope.values()):
            log.warning("per-layer-type RoPE settings (%s) have no transformers 4.x form; a 4.x reader will not "
                        "read this config right", sorted(rope))
            return out
        for key in _TOP_LEVEL_ROPE_KEYS:
            if key in rope:
                out[key] = rope[key]
        scaling = {k: v for k, v in rope.items() if k not in _TOP_LEVEL_ROPE_KEYS}
        out["rope_scaling"] = scaling if scaling.get("rope_type", "default") != "default" else None
    return out


def legacy_tokenizer_fields(tokenizer_config: dict, chat_template) -> dict:
    """The tokenizer_config.json fields transformers 4.45+ needs to build the same tokenizer."""
    out = {"tokenizer_class": "PreTrainedTokenizerFast"}
    if isinstance(chat_template, str):
        out["chat_template"] = chat_template
    elif isinstance(chat_template, dict) and chat_template:  # named templates: 4.x's list form
        out["chat_template"] = [{"name": k, "template": v} for k, v in chat_template.items()]
    extra = tokenizer_config.get("extra_special_tokens")
    if extra and "additional_special_tokens" not in tokenizer_config:
        out["additional_special_tokens"] = list(extra.values()) if isinstance(extra, dict) else list(extra)
    return out


def _update_json(path: Path, fields: dict) -> None:
    data = json.loads(path.read_text(encoding="utf-8"))
    data.update(fields)
    path.write_text(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def make_portable(directory: Path, tokenizer) -> None:
    """Add the legacy fields to `directory`'s config.json and tokenizer_config.json (written by save_pretrained)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    _update_json(config_path, legacy_config_fields(json.loads(config_path.read_text(encoding="utf-8"))))
    token_path = directory / "tokenizer_config.json"
    if not (directory / "tokenizer.json").is_file():
        raise ConfigError(
            f"{directory} has no tokenizer.json: the export writes fast (tokenizers) tokenizers only, which load "
            "the same in every transformers version; this tokenizer is "
            f"{type(tokenizer).__name__}"
        )
    token_config = json.loads(token_path.read_text(encoding="utf-8"))
    _update_json(token_path, legacy_tokenizer_fields(token_config, tokenizer.chat_template))
