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


def _check_syntax(source: str, where: str) -> None:
    """Compile a template file once with what transformers' chat-template environment adds to Jinja's syntax (loop
    controls, the `{% generation %}` tag): a syntax error is then the file's, named by line, before any record is read
    (rendering would report it against the first record, or count every record as skipped)."""
    import jinja2
    import jinja2.ext

    class GenerationTag(jinja2.ext.Extension):  # marks assistant text for transformers' masks; renders its body
        tags = {"generation"}

        def parse(self, parser):
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return jinja2.nodes.Scope(body, lineno=lineno)

    env = jinja2.Environment(extensions=[GenerationTag, jinja2.ext.loopcontrols])
    try:
        env.from_string(source)
    except jinja2.TemplateSyntaxError as exc:
        raise ConfigError(f"{where}:{exc.lineno}: chat template syntax error: {exc.message.rstrip('.')}; fix the "
                          "template (or use a shipped one: `ember templates`)") from None


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
        source = path.read_text(encoding="utf-8")
        _check_syntax(source, str(path))
        return ChatTemplate(
            name=path.stem,
            source=source,
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
