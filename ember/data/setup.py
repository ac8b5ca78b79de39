"""Pick the chat template for a run and make the tokenizer able to render it."""

from __future__ import annotations

from typing import Optional

from ember.data.render import Renderer
from ember.errors import ConfigError


def choose_template(name: str, tokenizer, family_template: Optional[str] = None):
    """`auto` → the tokenizer's own template, else the model family's shipped one; otherwise a name or .jinja path."""
    if name == "auto" and tokenizer.chat_template:
        return None
    from ember.data.templates import load_template

    if name == "auto":
        if family_template:
            return load_template(family_template)
        raise ConfigError(
            "the tokenizer has no chat template and the model family is unknown: set data.template "
            "(see `ember templates`)"
        )
    return load_template(name)


def add_template_tokens(tokenizer, template) -> int:
    """Register the template's special tokens the tokenizer lacks (the model's embeddings must grow by the count)."""
    if template is None:
        return 0
    vocab = tokenizer.get_vocab()
    missing = [t for t in template.special_tokens if t not in vocab]
    if not missing:
        return 0
    return tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)


def build_renderer(template_name: str, tokenizer, family_template: Optional[str] = None) -> Renderer:
    template = choose_template(template_name, tokenizer, family_template)
    add_template_tokens(tokenizer, template)
    renderer = Renderer(tokenizer, template)
    # Save the template into the tokenizer: whatever is saved next to the weights renders exactly like training.
    tokenizer.chat_template = renderer.source
    return renderer
