"""The chat templates Ember ships: Jinja data files (`<name>.jinja`) described by `index.yaml`.

Each template is the Jinja a tokenizer's `apply_chat_template(..., chat_template=source)` renders, written from the
model family's own prompt format. Every shipped template is prefix-stable: rendering a conversation cut after any
assistant turn gives a prefix of the whole rendering, and the generation prompt is exactly the text that precedes
an answer; the renderer relies on both to find the supervised spans.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ember.errors import ConfigError

TEMPLATE_DIR = Path(__file__).parent
EOS_PLACEHOLDER = "{eos_token}"


@dataclass(frozen=True)
class ChatTemplate:
    name: str
    source: str
    stop: tuple[str, ...]  # end-of-turn strings; EOS_PLACEHOLDER stands for the tokenizer's EOS
    special_tokens: tuple[str, ...]  # literal special tokens the template emits besides BOS/EOS
    description: str

    def stop_strings(self, tokenizer: Any) -> list[str]:
        """The stop strings with `{eos_token}` resolved to `tokenizer.eos_token` (deduplicated, order kept)."""
        out: list[str] = []
        for s in self.stop:
            if s == EOS_PLACEHOLDER:
                s = getattr(tokenizer, "eos_token", None)
                if not s:
                    raise ConfigError(
                        f"chat template '{self.name}' stops on the tokenizer's EOS, but the tokenizer has no eos_token; "
                        "set one (e.g. AutoTokenizer.from_pretrained(..., eos_token='</s>')) or use another template"
                    )
            if s not in out:
                out.append(s)
        return out


@functools.lru_cache(maxsize=1)
def _index() -> dict[str, dict[str, Any]]:
    return yaml.safe_load((TEMPLATE_DIR / "index.yaml").read_text(encoding="utf-8"))


def template_names() -> list[str]:
    """The names of the shipped templates, sorted."""
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.jinja"))


def load_template(name_or_path: str) -> ChatTemplate:
    """A shipped template by name, or any `.jinja` file by path (stopping on the tokenizer's EOS)."""
    names = template_names()
    if name_or_path in names:
        meta = _index().get(name_or_path)
        if meta is None:
            raise ConfigError(f"shipped template '{name_or_path}' has no entry in {TEMPLATE_DIR / 'index.yaml'}")
        return ChatTemplate(
            name=name_or_path,
            source=(TEMPLATE_DIR / f"{name_or_path}.jinja").read_text(encoding="utf-8"),
            stop=tuple(meta["stop"]),
            special_tokens=tuple(meta.get("special_tokens") or ()),
            description=meta["description"],
        )
    path = Path(name_or_path).expanduser()
    if path.suffix == ".jinja" or path.is_file():
        if not path.is_file():
            raise ConfigError(f"chat template file not found: {path}")
        return ChatTemplate(
            name=path.stem,
            source=path.read_text(encoding="utf-8"),
            stop=(EOS_PLACEHOLDER,),
            special_tokens=(),
            description=f"custom template from {path}",
        )
    close = difflib.get_close_matches(name_or_path, names, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise ConfigError(
        f"unknown chat template '{name_or_path}': {hint}shipped templates are {', '.join(names)}; "
        "or give the path to a .jinja file"
    )
