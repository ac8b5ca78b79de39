"""Tool calling on the data side: every reader's tools/calls/results → one shape, malformed ones as that record's
DataError, the `hermes` template's goldens, labels on calls and never on results, linear spans with bare calls, and
reading a model's calls back (whole and streamed)."""

from __future__ import annotations

import json

import jinja2
import pytest

from ember.data.conversation import Conversation, Message
from ember.data.pipeline import load_records
from ember.data.recipes import CHAT
from ember.data.render import Renderer
from ember.data.report import DataReport
from ember.data.templates import load_template
from ember.data.tools import CallStream, calls_text, parse_tool_calls, tools_text
from ember.errors import DataError

WEATHER = {"name": "get_weather", "description": "Current weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TIME = {"name": "get_time", "description": "Local time of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
TOOLS = [{"type": "function", "function": WEATHER}, {"type": "function", "function": TIME}]


def call(name: str, **arguments) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": arguments}}


def read(make_config, path, **data) -> list[Conversation]:
    return load_records(make_config([{"path": str(path)}], **data).data, CHAT, DataReport()).train


def shape(conv: Conversation) -> list[tuple]:
    return [(m.role, m.content, m.tool_calls) for m in conv.messages]


# -- readers -----------------------------------------------------------------------------------------------------
def test_sharegpt_parallel_calls_and_ms_swift_speakers(write, make_config):
    records = [
        {"conversations": [  # LLaMA-Factory: one function_call turn holding a list of calls
            {"from": "human", "value": "Weather and time in Oslo?"},
            {"from": "function_call", "value": json.dumps([{"name": "get_weather", "arguments": {"city": "Oslo"}},
                                                           {"name": "get_time", "arguments": {"city": "Oslo"}}])},
            {"from": "observation", "value": "3 C"},
            {"from": "observation", "value": "14:00"},
            {"from": "gpt", "value": "3 C at 14:00."}], "tools": [WEATHER, TIME]},
        {"conversations": [  # ms-swift speakers: text, then one tool_call turn per parallel call
            {"from": "user", "value": "Oslo?"},
            {"from": "assistant", "value": "Checking."},
            {"from": "tool_call", "value": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'},
            {"from": "tool_call", "value": '{"name": "get_time", "arguments": "{\\"city\\": \\"Oslo\\"}"}'},
            {"from": "tool_response", "value": "3 C"},
            {"from": "assistant", "value": "3 C."}], "tools": json.dumps(TOOLS)},
    ]
    first, second = read(make_config, write("s.jsonl", records))
    both = [call("get_weather", city="Oslo"), call("get_time", city="Oslo")]
    assert shape(first) == [("user", "Weather and time in Oslo?", None), ("assistant", "", both),
                            ("tool", "3 C", None), ("tool", "14:00", None), ("assistant", "3 C at 14:00.", None)]
    assert shape(second) == [("user", "Oslo?", None), ("assistant", "Checking.", both), ("tool", "3 C", None),
                             ("assistant", "3 C.", None)]
    assert first.tools == second.tools == TOOLS  # flat schemas wrapped, a JSON string parsed


def test_openai_legacy_function_role_and_ms_swift_roles(write, make_config):
    records = [
        {"messages": [
            {"role": "user", "content": "Oslo?"},
            {"role": "assistant", "content": None, "function_call": {"name": "get_time", "arguments": '{"city": "Oslo"}'}},
            {"role": "function", "name": "get_time", "content": "14:00"},
            {"role": "assistant", "content": "14:00."}], "tools": [TIME]},
        {"messages": [
            {"role": "user", "content": "Oslo?"},
            {"role": "tool_call", "content": '{"name": "get_weather", "arguments": {"city": "Oslo"}}'},
            {"role": "tool_response", "content": "3 C"},
            {"role": "assistant", "content": "3 C."}], "tools": json.dumps([TOOLS[0]])},
    ]
    legacy, swift = read(make_config, write("o.jsonl", records))
    assert shape(legacy) == [("user", "Oslo?", None), ("assistant", "", [call("get_time", city="Oslo")]),
                             ("tool", "14:00", None), ("assistant", "14:00.", None)]
    assert shape(swift) == [("user", "Oslo?", None), ("assistant", "", [call("get_weather", city="Oslo")]),
                            ("tool", "3 C", None), ("assistant", "3 C.", None)]
    assert legacy.tools == [TOOLS[1]] and swift.tools == [TOOLS[0]]


GLAIVE = {
    "system": "SYSTEM: You are a helpful assistant with access to the following functions. Use them if required -\n"
              + json.dumps(WEATHER, indent=4) + "\n\n" + json.dumps(TIME, indent=4),
    "chat": "USER: Is it cold in Oslo?\n\n\nASSISTANT: <functioncall> {\"name\": \"get_weather\", \"arguments\": "
            "'{\"city\": \"Oslo\"}'} <|endoftext|>\n\n\nFUNCTION RESPONSE: {\"temperature\": 3}\n\n\n"
            "ASSISTANT: Yes, it is 3 degrees. <|endoftext|>\n\n\nUSER: Thanks!\n\n\nASSISTANT: You are welcome. "
            "<|endoftext|>\n",
}


def test_glaive_raw_records(write, make_config):
    plain = {"system": "SYSTEM: You are a helpful assistant, with no access to external functions.",
             "chat": "USER: Hi\n\n\nASSISTANT: Hello! <|endoftext|>\n\n\n"}
    conv, chat = read(make_config, write("g.jsonl", [GLAIVE, plain]))
    assert shape(conv) == [
        ("system", "You are a helpful assistant with access to the following functions. Use them if required -", None),
        ("user", "Is it cold in Oslo?", None),
        ("assistant", "", [call("get_weather", city="Oslo")]),  # glaive's single-quoted arguments read as JSON
        ("tool", '{"temperature": 3}', None),
        ("assistant", "Yes, it is 3 degrees.", None), ("user", "Thanks!", None),
        ("assistant", "You are welcome.", None)]
    assert conv.tools == TOOLS
    assert shape(chat) == [("system", "You are a helpful assistant, with no access to external functions.", None),
                           ("user", "Hi", None), ("assistant", "Hello!", None)] and chat.tools is None


def test_msagent_bench_answers_split_into_calls_and_results(write, make_config):
    think = ('<|startofthink|>```JSON\n{"api_name": "modelscope_text-ie", "url": "http://x/ie", "parameters": '
             '{"text": "美国和中国"}}\n```<|endofthink|>')
    answer = f"好的。{think}\n\n<|startofexec|>```JSON\n{{\"地理位置\": [\"中国\", \"美国\"]}}\n```<|endofexec|>\n结果：中国、美国。"
    turns = [{"from": "system", "value": "你是助手。"}, {"from": "user", "value": "抽取地名：美国和中国"},
             {"from": "assistant", "value": answer}]
    record = {"id": "MS_Agent_Bench_1", "conversations": repr(turns)}  # stored as Python-literal text
    (conv,) = read(make_config, write("m.jsonl", [record]))
    assert shape(conv) == [
        ("system", "你是助手。", None), ("user", "抽取地名：美国和中国", None),
        ("assistant", "好的。", [call("modelscope_text-ie", text="美国和中国")]),
        ("tool", '{"地理位置": ["中国", "美国"]}', None), ("assistant", "结果：中国、美国。", None)]


@pytest.mark.parametrize("record, field, problem", [
    ({"tools": "[{bad json"}, "tools", "expected a JSON list of tool schemas: Expecting property name"),
    ({"tools": 5}, "tools", "expected a list of tool schemas, got int"),
    ({"tools": [{"description": "no name"}]}, "tools[0].name", "a tool needs a non-empty name string, got None"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type", "only function tools are supported, got 'retrieval'"),
    ({"calls": "not a list"}, "messages[1].tool_calls", "expected a list of tool calls, got str"),
    ({"calls": [{"function": {"name": "f", "arguments": "{oops"}}]}, "messages[1].tool_calls[0].function.arguments",
     "arguments are not valid JSON: Expecting property name enclosed in double quotes (column 2)"),
    ({"calls": [{"function": {"name": "f", "arguments": "[1]"}}]}, "messages[1].tool_calls[0].function.arguments",
     "arguments must be a JSON object, got list"),
    ({"calls": [{"function": {"arguments": {}}}]}, "messages[1].tool_calls[0].function.name",
     "a tool call needs a non-empty function name, got None"),
    ({"user_calls": [call("f")]}, "messages[0].tool_calls", "only assistant messages make tool calls"),
])
def test_malformed_tools_and_calls_are_that_records_error(write, make_config, record, field, problem):
    messages = [{"role": "user", "content": "q", **({"tool_calls": record["user_calls"]} if "user_calls" in record
                                                     else {})},
                {"role": "assistant", "content": "", "tool_calls": record.get("calls", [call("f")])},
                {"role": "tool", "content": "r"}, {"role": "assistant", "content": "a"}]
    bad = {"messages": messages, **({"tools": record["tools"]} if "tools" in record else {})}
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    path = write("bad.jsonl", [good, bad, good])
    with pytest.raises(DataError) as info:
        read(make_config, path)
    assert (info.value.source, info.value.field) == (f"{path}:2", field)
    assert info.value.problem.startswith(problem)
    report = DataReport()
    kept = load_records(make_config([{"path": str(path)}], on_error="skip").data, CHAT, report).train
    assert [c.source for c in kept] == [f"{path}:1", f"{path}:3"]
    assert [r["source"] for r in report.skipped_records] == [f"{path}:2"]


def test_malformed_glaive_and_sharegpt_calls(write, make_config):
    bad_call = {"conversations": [{"from": "human", "value": "q"}, {"from": "function_call", "value": "get_time()"}]}
    path = write("c.jsonl", [bad_call])
    with pytest.raises(DataError, match=r"c.jsonl:1: field 'conversations\[1\].value': a tool call must be JSON"):
        read(make_config, path)
    bad_schema = {"system": "SYSTEM: Use these -\n{\"name\": \"f\",}", "chat": "USER: q\n\n\nASSISTANT: a"}
    path = write("g.jsonl", [bad_schema])
    with pytest.raises(DataError, match=r"g.jsonl:1: field 'system': the function schemas after the system text "
                                        r"are not JSON"):
        read(make_config, path)


# -- the hermes template -----------------------------------------------------------------------------------------
TOOL_CHAT = [
    Message("system", "Be brief."),
    Message("user", "Weather and time in Oslo?"),
    Message("assistant", "Checking.", tool_calls=[call("get_weather", city="Oslo"), call("get_time", city="Oslo")]),
    Message("tool", '{"temperature": 3}'),
    Message("tool", '"14:00"'),
    Message("assistant", "3 degrees at 14:00."),
    Message("user", "And Bergen?"),
    Message("assistant", "", tool_calls=[call("get_weather", city="Bergen")]),
    Message("tool", '{"temperature": 7}'),
    Message("assistant", "7 degrees."),
]
SCHEMAS = "\n".join(json.dumps(t, ensure_ascii=False) for t in TOOLS)
HERMES_SYSTEM = (
    "<|im_start|>system\nBe brief.\n\n# Tools\n\nYou may call one or more of these functions to help with the request. "
    f"Their JSON schemas are inside <tools></tools>:\n<tools>\n{SCHEMAS}\n</tools>\n\nTo call a function, answer "
    "with one <tool_call></tool_call> block per call, holding a JSON object with the function's name and arguments:"
    '\n<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n')
OSLO_CALLS = ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>\n'
              '<tool_call>\n{"name": "get_time", "arguments": {"city": "Oslo"}}\n</tool_call>')
BERGEN_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Bergen"}}\n</tool_call>'
HERMES_GOLDEN = (
    HERMES_SYSTEM
    + "<|im_start|>user\nWeather and time in Oslo?<|im_end|>\n"
    + f"<|im_start|>assistant\nChecking.\n{OSLO_CALLS}<|im_end|>\n"
    + '<|im_start|>user\n<tool_response>\n{"temperature": 3}\n</tool_response>\n<tool_response>\n"14:00"\n'
      "</tool_response><|im_end|>\n"
    + "<|im_start|>assistant\n3 degrees at 14:00.<|im_end|>\n"
    + "<|im_start|>user\nAnd Bergen?<|im_end|>\n"
    + f"<|im_start|>assistant\n{BERGEN_CALL}<|im_end|>\n"
    + '<|im_start|>user\n<tool_response>\n{"temperature": 7}\n</tool_response><|im_end|>\n'
    + "<|im_start|>assistant\n7 degrees.<|im_end|>\n"
)


@pytest.fixture(scope="module")
def hermes(smol_tokenizer):
    return Renderer(smol_tokenizer, load_template("hermes"))


def test_hermes_golden_with_tools_calls_and_results(hermes):
    assert hermes.render_text(TOOL_CHAT, tools=TOOLS) == HERMES_GOLDEN
    # Qwen2.5's layout: an OpenAI arguments string is written as it is, a JSON object once
    as_string = [TOOL_CHAT[6], Message("assistant", "", tool_calls=[
        {"type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Bergen"}'}}])]
    assert hermes.render_text(as_string).endswith(f"<|im_start|>assistant\n{BERGEN_CALL}<|im_end|>\n")
    assert hermes.render_text(TOOL_CHAT[1:2], add_generation_prompt=True, tools=TOOLS) == (
        HERMES_SYSTEM.replace("Be brief.\n\n", "")
        + "<|im_start|>user\nWeather and time in Oslo?<|im_end|>\n<|im_start|>assistant\n")
    assert hermes.tool_call_format == "hermes"


def test_hermes_prefix_stable_and_refusals(hermes, smol_tokenizer):
    full = hermes.render_text(TOOL_CHAT, tools=TOOLS)
    for k, m in enumerate(TOOL_CHAT):
        if m.role == "assistant":
            prompt = hermes.render_text(TOOL_CHAT[:k], add_generation_prompt=True, tools=TOOLS)
            assert full.startswith(hermes.render_text(TOOL_CHAT[: k + 1], tools=TOOLS)) and full.startswith(prompt)
    source = load_template("hermes").source
    with pytest.raises(jinja2.exceptions.TemplateError, match="system message may only come first"):
        smol_tokenizer.apply_chat_template([{"role": "user", "content": "a"}, {"role": "system", "content": "s"}],
                                           chat_template=source, tokenize=False)
    with pytest.raises(jinja2.exceptions.TemplateError, match="unsupported role 'observation'"):
        smol_tokenizer.apply_chat_template([{"role": "observation", "content": "a"}], chat_template=source,
                                           tokenize=False)


def trained_texts(renderer, enc) -> list[str]:
    runs, current = [], []
    for token, label in zip(enc.input_ids, enc.labels, strict=True):
        if label == -100:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(token)
    return [renderer.tokenizer.decode(r) for r in runs + ([current] if current else [])]


def test_labels_cover_calls_and_answers_never_results(hermes):
    enc = hermes.encode(Conversation(TOOL_CHAT, "t", tools=TOOLS))
    assert trained_texts(hermes, enc) == [f"Checking.\n{OSLO_CALLS}<|im_end|>", "3 degrees at 14:00.<|im_end|>",
                                          f"{BERGEN_CALL}<|im_end|>", "7 degrees.<|im_end|>"]
    assert enc.input_ids == hermes.tokenizer(HERMES_GOLDEN, add_special_tokens=False)["input_ids"]


def test_template_without_tools_gets_the_text_form(smol_tokenizer):
    """chatml takes no tools: the list joins the system message, calls and results become text, and the labels are
    the same answers as with a template that takes them."""
    chatml = Renderer(smol_tokenizer, load_template("chatml"))
    assert chatml.tool_call_format == "hermes"
    messages = chatml.template_messages(TOOL_CHAT, TOOLS)
    assert messages[:4] == [
        {"role": "system", "content": "Be brief.\n\n" + tools_text(TOOLS)},
        {"role": "user", "content": "Weather and time in Oslo?"},
        {"role": "assistant", "content": f"Checking.\n{OSLO_CALLS}"},
        {"role": "user", "content": '<tool_response>\n{"temperature": 3}\n</tool_response>'}]
    assert chatml.template_messages(TOOL_CHAT[1:2], TOOLS)[0] == {"role": "system", "content": tools_text(TOOLS)}
    enc = chatml.encode(Conversation(TOOL_CHAT, "t", tools=TOOLS))
    assert trained_texts(chatml, enc) == [f"Checking.\n{OSLO_CALLS}<|im_end|>", "3 degrees at 14:00.<|im_end|>",
                                          f"{BERGEN_CALL}<|im_end|>", "7 degrees.<|im_end|>"]


def test_a_template_with_its_own_call_format_is_not_read_back(smol_tokenizer, tmp_path):
    path = tmp_path / "own.jinja"
    path.write_text("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}{% for c in m['tool_calls'] or [] %}"
                    "[CALL {{ c['function']['name'] }}]{% endfor %}\n{% endfor %}", encoding="utf-8")
    assert Renderer(smol_tokenizer, load_template(str(path))).tool_call_format is None


def test_bare_calls_keep_linear_spans(smol_tokenizer):
    """A call without text is left out of the skeleton: its span is exact, every other answer is still placed from
    learned glue. Spans equal the prefix-render definition; the render count is pinned."""
    renderer = Renderer(smol_tokenizer, load_template("hermes"))
    convs = []
    for i in range(12):
        city = f"City{i}"
        msgs = [Message("user", f"Weather in {city}?"), Message("assistant", "", tool_calls=[call("get_weather", city=city)]),
                Message("tool", f'{{"temperature": {i}}}'), Message("assistant", f"{i} degrees."),
                Message("user", "Thanks."), Message("assistant", "You are welcome.")]
        convs.append(Conversation(msgs, f"c{i}", tools=TOOLS))
    texts = [renderer.render_text(c.messages, tools=c.tools) for c in convs]
    renderer.render_calls = 0
    spans = [renderer.assistant_spans(c, t) for c, t in zip(convs, texts, strict=True)]
    # per conversation: the skeleton + the bare call's two prefix renders; the 3 audited conversations also render
    # the two placed answers' prefixes (3 more: the last answer's end is the text's end)
    assert renderer.render_calls == 12 * 3 + 3 * 3
    assert not renderer.layout.exact_only
    assert spans == [renderer.exact_spans(c, t) for c, t in zip(convs, texts, strict=True)]


# -- reading calls back ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, content, calls", [
    ("Hello.", "Hello.", []),
    (BERGEN_CALL, "", [call("get_weather", city="Bergen")]),
    (f"Checking.\n{OSLO_CALLS}", "Checking.", [call("get_weather", city="Oslo"), call("get_time", city="Oslo")]),
    ('<tool_call>\n{"name": "get_time", "arguments": "{\\"city\\": \\"Oslo\\"}"}', "",  # unclosed last block
     [call("get_time", city="Oslo")]),
    ('<tool_call>\n{"name": "get_time", "arguments": {"city": "Os', None, []),  # cut off
    ('<tool_call>\n{"name": "get_time"}\n</tool_call>', None, []),  # no arguments
    ('<tool_call>\n[1, 2]\n</tool_call>', None, []),
    (f"{BERGEN_CALL}\nDone!", None, []),  # text after the calls
    ('<tool_call>\n{"name": "", "arguments": {}}\n</tool_call>', None, []),
])
def test_parse_tool_calls(text, content, calls):
    parsed = parse_tool_calls(text)
    assert (parsed.content, parsed.calls) == (text if content is None else content, calls)


@pytest.mark.parametrize("text", [
    "Plain answer, no calls.", f"Checking.\n{OSLO_CALLS}", BERGEN_CALL, "a <tool_c b", "ends with <tool_c",
    f"text  \n {BERGEN_CALL}\n", f"{BERGEN_CALL} trailing", "spaces   ", "<tool_call>\n{broken",
])
def test_streamed_parse_equals_the_whole(text):
    whole = parse_tool_calls(text)
    for size in (1, 2, 3, 7, len(text)):
        stream = CallStream()
        shown = "".join(stream.feed(text[i:i + size]) for i in range(0, len(text), size))
        rest, calls = stream.finish()
        assert (shown + rest, calls) == (whole.content, whole.calls), size
        if whole.calls:
            assert "<tool_c" not in shown  # a tag is never half shown
    assert calls_text(whole.calls) in text
