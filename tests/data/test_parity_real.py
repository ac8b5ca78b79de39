"""Token-for-token parity with `tokenizer.apply_chat_template` on real multi-turn conversations from ../shared/data.

Every file is read by our own readers (format detected per file), encoded by the renderer with SmolLM2's template,
and compared with what `apply_chat_template(..., tokenize=True)` gives for the same messages. Each assistant turn's
trained span must decode to exactly that message's content plus `<|im_end|>`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ember.data.preview import spans

from ember.data.conversation import Conversation
from ember.data.files import iter_records
from ember.data.formats import convert, detect_format
from ember.data.tokenize import holds_added_token
from ember.errors import DataError

# file (under sft/) → how many multi-turn conversations to take from its start
SOURCES = {
    "medicalgpt/sharegpt_zh_1K_format.jsonl": 40,
    "fastchat/dummy_conversation.json": 40,
    **{f"moss/{name}.jsonl": 10 for name in (
        "harmless_conversations", "honest_conversations", "helpful_brainstorming_conversations",
        "helpful_code_conversations", "helpful_complex_instruction_conversations",
        "helpful_role_playing_conversations", "helpful_writing_conversations")},
    "firefly/dummy_data.jsonl": 33,
    "llamafactory/glaive_toolcall_en_demo.json": 25,
    "llamafactory/glaive_toolcall_zh_demo.json": 25,
}


def _multi_turn(path: Path, want: int, tokenizer) -> tuple[list[Conversation], list[str], list[str]]:
    """The first `want` multi-turn conversations, and the sources in the whole file with special-token text or bad data."""
    convs, special, bad = [], [], []
    fmt = None
    for source, record in iter_records(str(path)):
        try:
            if isinstance(record, DataError):
                raise record
            fmt = fmt or detect_format(record)
            conv = convert(fmt, record, source, {})
        except DataError:
            bad.append(source)
            continue
        if holds_added_token(tokenizer, [m.content for m in conv.messages]):
            special.append(source)  # parity cannot hold: we keep such text as text, apply_chat_template does not
        elif len(convs) < want and len(conv.assistant_indices()) >= 2:
            convs.append(conv)
    return convs, special, bad


def _trained_runs(enc) -> list[list[int]]:
    return [ids for trained, ids in spans(enc) if trained]


@pytest.mark.smollm2
def test_parity_with_apply_chat_template(shared_data, smol_tokenizer, renderer):
    checked, special, bad, tool_convs = 0, [], [], 0
    for name, want in SOURCES.items():
        convs, file_special, file_bad = _multi_turn(shared_data / "sft" / name, want, smol_tokenizer)
        assert len(convs) == want, f"{name}: only {len(convs)} multi-turn conversations"
        special += file_special
        bad += [b.rsplit("/", 1)[1] for b in file_bad]
        for conv, enc in zip(convs, renderer.encode_batch(convs), strict=True):
            messages = renderer.template_messages(conv.messages)
            expected = smol_tokenizer.apply_chat_template(messages, tools=conv.tools, tokenize=True)["input_ids"]
            assert enc.input_ids == expected, conv.source
            answers = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
            assert [smol_tokenizer.decode(run) for run in _trained_runs(enc)] == answers, conv.source
            tool_convs += any(m.tool_calls for m in conv.messages)
            checked += 1
    assert checked == sum(SOURCES.values()) >= 200
    assert tool_convs == 28  # glaive conversations with a function call (the others just chat)
    assert bad == ["sharegpt_zh_1K_format.jsonl:781"]  # one record has no assistant turn at all
    assert len(special) <= 3, special


@pytest.mark.smollm2
def test_tool_calls_render_as_text_for_a_template_without_tools(shared_data, renderer):
    """SmolLM2's template knows no tool calls: calls become JSON text of the assistant, results a user turn."""
    (conv,), _, _ = _multi_turn(shared_data / "sft/llamafactory/glaive_toolcall_en_demo.json", 1, renderer.tokenizer)
    messages = renderer.template_messages(conv.messages)
    call = next(i for i, m in enumerate(conv.messages) if m.tool_calls)
    function = conv.messages[call].tool_calls[0]["function"]
    assert messages[call]["role"] == "assistant"
    assert messages[call]["content"].startswith('{"name": "' + function["name"] + '", "arguments": {')
    assert conv.messages[call + 1].role == "tool" and messages[call + 1]["role"] == "user"
