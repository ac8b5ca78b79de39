"""Token-for-token parity with `tokenizer.apply_chat_template` on real multi-turn conversations from ../shared/data.

Every file is read by our own readers (format detected per file), encoded by the renderer with SmolLM2's template,
and compared with what `apply_chat_template(..., tokenize=True)` gives for the same messages. Each assistant turn's
trained span must decode to exactly that message's content plus `<|im_end|>`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ember.data.preview import spans

from ember.data.conversation import Conversation
from ember.data.files import iter_records
from ember.data.tools import calls_text, tools_text
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
            messages = renderer.template_messages(conv.messages, conv.tools)
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
    """SmolLM2's template knows no tools: the tool list joins a system message put first, calls become
    `<tool_call>` text of the assistant, results a user turn in `<tool_response>` (ember.data.tools' one format)."""
    (conv,), _, _ = _multi_turn(shared_data / "sft/llamafactory/glaive_toolcall_en_demo.json", 1, renderer.tokenizer)
    assert conv.messages[0].role == "user" and conv.tools
    messages = renderer.template_messages(conv.messages, conv.tools)
    assert messages[0] == {"role": "system", "content": tools_text(conv.tools)}
    call = next(i for i, m in enumerate(conv.messages) if m.tool_calls)
    function = conv.messages[call].tool_calls[0]["function"]
    assert messages[call + 1]["role"] == "assistant"
    assert messages[call + 1]["content"] == (
        f'<tool_call>\n{{"name": "{function["name"]}", "arguments": '
        f'{json.dumps(function["arguments"], ensure_ascii=False)}}}\n</tool_call>')
    assert conv.messages[call + 1].role == "tool"
    assert messages[call + 2] == {"role": "user", "content": f"<tool_response>\n{conv.messages[call + 1].content}\n"
                                                             "</tool_response>"}


@pytest.mark.smollm2
def test_parity_with_a_template_that_takes_tools(shared_data, smollm2_dir):
    """The shipped `hermes` template takes `tools=` and `tool_calls` itself: on the first 60 multi-turn glaive demo
    conversations of each language the training ids equal `apply_chat_template(messages, tools=...)`, and the trained
    runs are exactly the answers and the calls (each with its `<|im_end|>`), so no tool result is trained."""
    from transformers import AutoTokenizer

    from ember.data.render import Renderer
    from ember.data.templates import load_template

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.chat_template = load_template("hermes").source
    renderer = Renderer(tokenizer)  # the tokenizer's own template, as for a Qwen2.5 model
    convs = []
    for name in ("en", "zh"):
        convs += _multi_turn(shared_data / f"sft/llamafactory/glaive_toolcall_{name}_demo.json", 60, tokenizer)[0]
    with_calls = [c for c in convs if any(m.tool_calls for m in c.messages)]
    assert (len(convs), len(with_calls)) == (120, 77)
    for conv, enc in zip(convs, renderer.encode_batch(convs), strict=True):
        messages = renderer.template_messages(conv.messages, conv.tools)
        assert messages == [m.to_template() for m in conv.messages]  # nothing converted: the template takes it all
        expected = tokenizer.apply_chat_template(messages, tools=conv.tools, tokenize=True)["input_ids"]
        assert enc.input_ids == expected, conv.source
        answers = [m.content + ("\n" if m.content and m.tool_calls else "") + calls_text(m.tool_calls or [])
                   + "<|im_end|>" for m in conv.messages if m.role == "assistant"]
        assert [tokenizer.decode(run) for run in _trained_runs(enc)] == answers, conv.source
