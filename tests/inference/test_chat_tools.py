"""`ember chat --tools`: calls are held back from the streamed text and shown one per line, `/tool RESULT` gives
them their results (the next answer waits for all of them), and the history holds calls and results as training
data does. The model's answers are scripted (a random model writes no calls); the session logic is what is tested."""

from __future__ import annotations

import io
import json

import pytest

from ember.data.conversation import Message
from ember.data.tools import normalize_tools
from ember.errors import ConfigError, DataError
from ember.inference.chat import ChatSession, run_chat
from ember.inference.cli import read_tools
from ember.inference.completion import GenerationOptions

TOOLS = normalize_tools([{"name": "get_weather", "parameters": {"type": "object"}},
                         {"name": "get_time", "parameters": {"type": "object"}}], "test")
WEATHER = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
TIME = '{"name": "get_time", "arguments": {"city": "Oslo"}}'


def call(name: str) -> dict:
    return {"type": "function", "function": {"name": name, "arguments": {"city": "Oslo"}}}


def test_calls_are_shown_and_answered_with_tool_lines(tiny_engine, monkeypatch):
    answers = iter([f"Let me check.\n<tool_call>\n{WEATHER}\n</tool_call>\n<tool_call>\n{TIME}\n</tool_call>",
                    "It is 3 degrees at 14:00."])
    seen = []

    def scripted(messages, options=None, cancel=None, tools=None):
        seen.append(([(m.role, m.content, m.tool_calls) for m in messages], tools))
        text = next(answers)
        for i in range(0, len(text), 3):  # pieces that split the tags
            yield text[i:i + 3]

    monkeypatch.setattr(tiny_engine, "stream", scripted)
    session = ChatSession(tiny_engine, GenerationOptions(), tools=TOOLS)
    out = io.StringIO()
    run_chat(session, iter(["Weather and time in Oslo?\n", "/tool 3 C\n", "/tool 14:00\n"]), out, interactive=False)
    assert out.getvalue() == (f"Let me check.\n[tool call] {WEATHER}\n[tool call] {TIME}\n"
                              "(result kept; 1 more to give)\nIt is 3 degrees at 14:00.\n")
    history = [("user", "Weather and time in Oslo?", None),
               ("assistant", "Let me check.", [call("get_weather"), call("get_time")]),
               ("tool", "3 C", None), ("tool", "14:00", None)]
    assert seen == [(history[:1], TOOLS), (history, TOOLS)]  # the second answer saw both results
    assert [(m.role, m.content, m.tool_calls) for m in session.history] == history + [
        ("assistant", "It is 3 degrees at 14:00.", None)]
    assert (session.last_calls, session.awaiting) == ([], 0)


def test_an_answer_that_is_only_a_call_shows_its_line(tiny_engine, monkeypatch):
    monkeypatch.setattr(tiny_engine, "stream", lambda messages, options=None, cancel=None, tools=None:
                        iter(["<tool_call>\n", WEATHER, "\n</tool_call>"]))
    session = ChatSession(tiny_engine, GenerationOptions(), tools=TOOLS)
    out = io.StringIO()
    run_chat(session, iter(["Is it cold in Oslo?\n"]), out, interactive=False)
    assert out.getvalue() == f"[tool call] {WEATHER}\n"
    assert [(m.role, m.content, m.tool_calls) for m in session.history] == [
        ("user", "Is it cold in Oslo?", None), ("assistant", "", [call("get_weather")])]


def test_without_tools_a_call_is_plain_text_and_tool_lines_are_messages(tiny_engine, monkeypatch):
    monkeypatch.setattr(tiny_engine, "stream", lambda messages, options=None, cancel=None, tools=None:
                        iter([f"<tool_call>\n{WEATHER}\n</tool_call>"]))
    session = ChatSession(tiny_engine, GenerationOptions())
    out = io.StringIO()
    run_chat(session, iter(["/tool hi\n"]), out, interactive=False)
    assert out.getvalue() == f"<tool_call>\n{WEATHER}\n</tool_call>\n"
    assert [(m.role, m.content) for m in session.history] == [("user", "/tool hi"), ("assistant", out.getvalue()[:-1])]


def test_the_prompt_shows_the_tools(tiny_engine):
    session = ChatSession(tiny_engine, GenerationOptions(), tools=TOOLS)
    out = io.StringIO()
    from ember.inference.chat import print_prompt

    print_prompt(session, "Hi", out)
    text = tiny_engine.renderer.prompt_text([Message("user", "Hi")], TOOLS)
    assert f"\n{text}\n" in out.getvalue() and json.dumps(TOOLS[0], ensure_ascii=False) in text


def test_read_tools(tmp_path):
    path = tmp_path / "tools.json"
    path.write_text(json.dumps([{"name": "get_weather", "parameters": {"type": "object"}}]), encoding="utf-8")
    assert read_tools(str(path)) == TOOLS[:1]
    path.write_text("[", encoding="utf-8")
    with pytest.raises(ConfigError, match="not JSON"):
        read_tools(str(path))
    path.write_text('[{"description": "x"}]', encoding="utf-8")
    with pytest.raises(DataError, match=r"tools\[0\].name"):
        read_tools(str(path))
    with pytest.raises(ConfigError, match="no such file"):
        read_tools(str(tmp_path / "missing.json"))
