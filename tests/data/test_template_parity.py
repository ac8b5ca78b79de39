"""Every shipped template, through a real tokenizer: training ids == apply_chat_template ids, and each trained span
is exactly the answer plus the template's end-of-turn marker."""

from __future__ import annotations

import copy

import pytest

from ember.data.conversation import Conversation, Message
from ember.data.preview import spans
from ember.data.setup import build_renderer
from ember.data.templates import template_names

CONVERSATION = [
    Message("system", "You are a concise assistant."),
    Message("user", "Name a primary colour."),
    Message("assistant", "Red."),
    Message("user", "再给我一个。"),
    Message("assistant", "蓝色。"),
    Message("user", "And a third?"),
    Message("assistant", "Yellow."),
]


@pytest.mark.parametrize("name", template_names())
def test_shipped_template_parity_and_spans(name, smol_tokenizer):
    tok = copy.deepcopy(smol_tokenizer)
    renderer = build_renderer(name, tok)
    conv = Conversation(list(CONVERSATION), "golden:1")
    enc = renderer.encode(conv)
    expected = tok.apply_chat_template([m.to_template() for m in conv.messages], chat_template=renderer.source,
                                       tokenize=True)["input_ids"]
    assert enc.input_ids == list(expected)
    runs = [ids for trained, ids in spans(enc) if trained]  # one run per answer
    answers = [m.content for m in conv.messages if m.role == "assistant"]
    assert len(runs) == len(answers)
    for run, answer in zip(runs, answers, strict=True):
        text = tok.decode(run)
        assert answer in text
        assert any(text.rstrip().endswith(stop) for stop in renderer.stop_strings), (name, text)
        assert text.strip().startswith(answer)
    # Only xverse ends its generation prompt with a space that merges into the answer's first token; it is trained
    # and reported.
    assert bool(enc.warnings) == (name == "xverse"), enc.warnings
