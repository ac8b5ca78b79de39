"""Tools over the OpenAI API, driven by the official `openai` client: calls come back as `tool_calls` (streamed as
OpenAI streams them), unparseable calls as text, `tool_choice` none / auto / required / a named function, earlier
calls and results in the history rendered as training renders them, and a 400 for every invalid combination.

The tiny random model answers at random, so calls are obtained by forcing them (`tool_choice`), which constrains
decoding to `<tool_call>` blocks; what the answer is read into is the same code either way. Two templates: SmolLM2's
own (no tool support: Ember's text form) and the shipped `hermes` (the template takes tools itself)."""

from __future__ import annotations

import json
import shutil

import httpx
import openai
import pytest

from ember.data.conversation import Message
from ember.data.tools import normalize_tools
from ember.inference.completion import GenerationOptions, Row

from .conftest import API_KEY, MODEL

CITY = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 12}}, "required": ["city"],
        "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city", "parameters": CITY}},
         {"type": "function", "function": {"name": "get_time", "description": "Local time of a city", "parameters": CITY}}]
QUESTION = [{"role": "user", "content": "What is the weather in Oslo?"}]
NAMED = {"type": "function", "function": {"name": "get_time"}}


@pytest.fixture(scope="module")
def hermes_api(tiny_llm_dir, tmp_path_factory):
    """The tiny model with the shipped `hermes` template as its own (a template that takes tools, like Qwen2.5's)."""
    from transformers import AutoTokenizer

    from ember.data.templates import load_template
    from ember.inference.engine import Engine
    from ember.serving.api import create_app
    from ember.serving.background import serve_in_thread

    directory = tmp_path_factory.mktemp("tiny_hermes")
    shutil.copytree(tiny_llm_dir, directory, dirs_exist_ok=True)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    tokenizer.chat_template = load_template("hermes").source
    tokenizer.save_pretrained(directory)
    engine = Engine.load(str(directory))
    with serve_in_thread(create_app(engine, MODEL, api_key=API_KEY)) as url:
        yield type("Api", (), {"url": url, "engine": engine})


@pytest.fixture(params=["text-form", "hermes"])
def server(request, api, hermes_api):
    return api if request.param == "text-form" else hermes_api


def client_of(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def answer(server, messages, max_tokens: int, tools=TOOLS, **options) -> str:
    """What the engine itself generates for the conversation with these tools (greedy, no constraint)."""
    ids = server.engine.prompt_ids(messages, normalize_tools(tools, "test"))
    row = Row(ids, max_tokens, list(options.get("stop", [])))
    return server.engine.generate_rows([row], GenerationOptions(max_new_tokens=max_tokens))[0].text


def streamed(chunks) -> tuple[str, dict[int, dict], list[str]]:
    """(content, calls by index as the deltas build them, finish reasons) of a stream."""
    content, calls, finishes = "", {}, []
    for chunk in chunks:
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        content += choice.delta.content or ""
        for delta in choice.delta.tool_calls or []:
            call = calls.setdefault(delta.index, {"id": None, "name": "", "arguments": ""})
            if delta.id:
                assert call["id"] is None  # the id comes once, in the call's first delta
                call["id"] = delta.id
                assert delta.type == "function"
            call["name"] += delta.function.name or ""
            call["arguments"] += delta.function.arguments or ""
        if choice.finish_reason:
            finishes.append(choice.finish_reason)
    return content, calls, finishes


def test_a_forced_call_comes_back_as_tool_calls_streamed_or_not(server):
    client = client_of(server)
    r = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice=NAMED,
                                       parallel_tool_calls=False, max_tokens=40, temperature=0)
    choice = r.choices[0]
    assert (choice.finish_reason, choice.message.content) == ("tool_calls", None)
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function" and call.function.name == "get_time"
    arguments = json.loads(call.function.arguments)
    assert list(arguments) == ["city"] and isinstance(arguments["city"], str)  # the schema held
    # the prompt shows the tools exactly as training renders them for this template
    assert r.usage.prompt_tokens == len(server.engine.prompt_ids(QUESTION, normalize_tools(TOOLS, "test")))

    chunks = list(client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice=NAMED,
                                                 parallel_tool_calls=False, max_tokens=40, temperature=0, stream=True))
    assert chunks[0].choices[0].delta.role == "assistant"
    content, calls, finishes = streamed(chunks)
    assert (content, finishes) == ("", ["tool_calls"])
    assert [(c["name"], c["arguments"]) for c in calls.values()] == [("get_time", call.function.arguments)]
    assert calls[0]["id"].startswith("call_")


def test_required_calls_one_of_the_tools_in_every_choice(api):
    r = client_of(api).chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="required",
                                               parallel_tool_calls=False, max_tokens=60, temperature=1.0, seed=3, n=2)
    for choice in r.choices:
        assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
        assert choice.message.tool_calls[0].function.name in ("get_weather", "get_time")
        assert list(json.loads(choice.message.tool_calls[0].function.arguments)) == ["city"]
    assert r.choices[0].message.tool_calls[0].id != r.choices[1].message.tool_calls[0].id


@pytest.mark.parametrize("limit, finish", [({"max_tokens": 6}, "length"), ({"stop": ["city"]}, "stop")])
def test_a_call_that_does_not_parse_is_text(api, limit, finish):
    """A call cut by the token limit, or by a stop string inside it, is returned as the text it is."""
    client = client_of(api)
    kwargs = dict(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice=NAMED, temperature=0,
                  **({"max_tokens": 40} | limit))
    r = client.chat.completions.create(**kwargs)
    text = r.choices[0].message.content
    assert text.startswith('<tool_call>\n{"name": "get_time"'[: len(text)]) and text
    if finish == "stop":
        assert text == '<tool_call>\n{"name": "get_time", "arguments": {"'
    assert (r.choices[0].finish_reason, r.choices[0].message.tool_calls) == (finish, None)
    content, calls, finishes = streamed(client.chat.completions.create(**kwargs, stream=True))
    assert (content, calls, finishes) == (text, {}, [finish])  # held back, then sent as content


def test_auto_reads_calls_only_when_there_are_some(server):
    """With `auto` (the default) the answer is read for calls; the random model writes none, so its text comes back
    exactly as the engine generates it for the prompt with the tools."""
    client = client_of(server)
    want = answer(server, QUESTION, 8)
    assert "<tool_call>" not in want
    for kwargs in ({}, {"tool_choice": "auto"}):
        r = client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, max_tokens=8, temperature=0,
                                           **kwargs)
        assert (r.choices[0].message.content, r.choices[0].message.tool_calls) == (want, None)
        content, calls, _ = streamed(client.chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS,
                                                                    max_tokens=8, temperature=0, stream=True, **kwargs))
        assert (content, calls) == (want, {})


def test_tool_choice_none_leaves_the_tools_out(server):
    r = client_of(server).chat.completions.create(model=MODEL, messages=QUESTION, tools=TOOLS, tool_choice="none",
                                                  max_tokens=4, temperature=0)
    assert r.usage.prompt_tokens == len(server.engine.prompt_ids(QUESTION))


def test_history_with_calls_and_results_renders_as_training_does(server):
    """Earlier calls (arguments as OpenAI's JSON string) and their results render as training data with the same
    calls (arguments as an object) does."""
    history = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temperature": 3}'}]
    r = client_of(server).chat.completions.create(model=MODEL, messages=history, tools=TOOLS, max_tokens=4,
                                                  temperature=0)
    training = [Message("user", QUESTION[0]["content"]),
                Message("assistant", "", tool_calls=[{"id": "call_1", "type": "function", "function": {
                    "name": "get_weather", "arguments": {"city": "Oslo"}}}]),
                Message("tool", '{"temperature": 3}')]
    assert r.usage.prompt_tokens == len(server.engine.prompt_ids(training, normalize_tools(TOOLS, "test")))
    text = server.engine.renderer.prompt_text(training, normalize_tools(TOOLS, "test"))
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>' in text
    assert '<tool_response>\n{"temperature": 3}\n</tool_response>' in text


def post(server, **fields) -> httpx.Response:
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 2, **fields}
    return httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {API_KEY}"})


@pytest.mark.parametrize("fields, param, words", [
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "get_news"}}}, "tool_choice",
     "names the function 'get_news', which is not in `tools` (the tools are get_weather, get_time)"),
    ({"tools": [{"type": "retrieval"}]}, "tools.0.type", "'function'"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools.0.function.name", "pattern"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}}, "tool_choice",
     "send one of them"),
])
def test_invalid_tool_requests_are_400(api, fields, param, words):
    r = post(api, **fields)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and words in error["message"], error


def test_history_fields_openai_accepts_are_accepted(api):
    """OpenAI takes any string as earlier arguments, and ignores tool_calls where a role has none: so does Ember
    (the string is written as it is, as a template writes a string)."""
    calls = [{"id": "c", "type": "function", "function": {"name": "get_time", "arguments": "{oops"}}]
    history = QUESTION + [{"role": "assistant", "tool_calls": calls}, {"role": "tool", "content": "12:00"}]
    r = post(api, messages=history, tools=TOOLS)
    assert r.status_code == 200, r.text
    text = api.engine.renderer.prompt_text(
        [Message("user", QUESTION[0]["content"]), Message("assistant", "", tool_calls=[
            {"id": "c", "type": "function", "function": {"name": "get_time", "arguments": "{oops"}}]),
         Message("tool", "12:00")], normalize_tools(TOOLS, "test"))
    assert '<tool_call>\n{"name": "get_time", "arguments": {oops}\n</tool_call>' in text
    assert r.json()["usage"]["prompt_tokens"] == len(api.engine.tokenizer(text, add_special_tokens=False).input_ids)
    for fields in ({"messages": [{**QUESTION[0], "tool_calls": calls}]}, {"tool_choice": "required"},
                   {"tools": [], "tool_choice": {"type": "function", "function": {"name": "get_time"}}}):
        r = post(api, **fields)  # tool_calls on a user turn, tool_choice without tools: nothing to do with them
        assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == len(api.engine.prompt_ids(QUESTION))


def test_a_template_with_its_own_call_format_refuses_tools(api, monkeypatch):
    monkeypatch.setitem(api.engine.renderer.__dict__, "tool_call_format", None)
    r = post(api, tools=TOOLS)
    assert r.status_code == 400 and r.json()["error"]["param"] == "tools"
    assert "writes tool calls in its own format" in r.json()["error"]["message"]
    assert post(api, tools=TOOLS, tool_choice="none").status_code == 200  # no tools in the prompt: nothing to read
