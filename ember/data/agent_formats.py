"""Agent data whose calls live inside text: raw glaive-function-calling-v2 records and MSAgent-Bench answers.

- glaive: `{"system": "SYSTEM: ... -\\n{schema}\\n{schema}", "chat": "USER: ...\\n\\n\\nASSISTANT: <functioncall>
  {call} <|endoftext|>\\n\\n\\nFUNCTION RESPONSE: {result}\\n\\n\\nASSISTANT: ..."}`. The schemas after the system
  text become the conversation's `tools`; `<functioncall>` answers become tool calls (glaive's single-quoted
  arguments string is read as JSON); `FUNCTION RESPONSE` turns become tool results; `<|endoftext|>` is dropped
  (the template adds its own end of turn).
- MSAgent-Bench (ModelScope-Agent): sharegpt-shaped records whose assistant value interleaves text,
  `<|startofthink|>```JSON {"api_name", "url", "parameters"}```<|endofthink|>` (a call) and
  `<|startofexec|>```JSON {...}```<|endofexec|>` (its result). The value is split into assistant / tool messages
  in order; the call's `url` is dropped (an OpenAI call has a name and arguments only).
"""

from __future__ import annotations

import json
import re
from typing import Any

from ember.data.conversation import Conversation, Message
from ember.data.tools import calls_from_text, normalize_tools
from ember.errors import DataError

_GLAIVE_TURN = re.compile(r"(?:^|\n)\s*(USER|ASSISTANT|FUNCTION RESPONSE):\s?")
_GLAIVE_END = "<|endoftext|>"
_FUNCTIONCALL = "<functioncall>"
_MS_BLOCK = re.compile(r"<\|startofthink\|>(.*?)<\|endofthink\|>|<\|startofexec\|>(.*?)<\|endofexec\|>", re.DOTALL)
MS_MARKERS = ("<|startofthink|>", "<|startofexec|>")
_FENCE = re.compile(r"^\s*```[A-Za-z]*\s*\n?(.*?)\n?\s*```\s*$", re.DOTALL)


def from_glaive(record: dict[str, Any], source: str, columns: dict[str, str]) -> Conversation:
    chat = record.get("chat")
    if not isinstance(chat, str):
        raise DataError(source, "chat", f"expected the glaive chat text (USER: ... ASSISTANT: ...), got "
                                        f"{type(chat).__name__}")
    system, tools = _glaive_system(record.get("system"), source)
    msgs = [Message("system", system)] if system else []
    marks = list(_GLAIVE_TURN.finditer(chat))
    if not marks or chat[:marks[0].start()].strip():
        raise DataError(source, "chat", "expected turns starting with USER:, ASSISTANT: or FUNCTION RESPONSE:")
    for k, mark in enumerate(marks):
        end = marks[k + 1].start() if k + 1 < len(marks) else len(chat)
        text = chat[mark.end():end].strip()
        if text.endswith(_GLAIVE_END):
            text = text[: -len(_GLAIVE_END)].rstrip()
        speaker = mark.group(1)
        if speaker == "USER":
            msgs.append(Message("user", text))
        elif speaker == "FUNCTION RESPONSE":
            msgs.append(Message("tool", text))
        elif _FUNCTIONCALL in text:
            before, _, call = text.partition(_FUNCTIONCALL)
            msgs.append(Message("assistant", before.strip(),
                                tool_calls=calls_from_text(call, source, f"chat (turn {k + 1})")))
        else:
            msgs.append(Message("assistant", text))
    return Conversation(msgs, source, tools=tools)


def _glaive_system(value: Any, source: str) -> tuple[str, Any]:
    """The system text (without its `SYSTEM:` tag) and the JSON schemas that follow it, as tools."""
    if value in (None, ""):
        return "", None
    if not isinstance(value, str):
        raise DataError(source, "system", f"expected a string, got {type(value).__name__}")
    text = value.strip()
    if text.startswith("SYSTEM:"):
        text = text[len("SYSTEM:"):].strip()
    start = text.find("{")
    if start < 0:
        return text, None
    decoder, schemas, at = json.JSONDecoder(), [], start
    while at < len(text):
        try:
            schema, end = decoder.raw_decode(text, at)
        except json.JSONDecodeError as exc:
            raise DataError(source, "system", f"the function schemas after the system text are not JSON: {exc.msg} "
                                              f"(character {exc.pos})") from None
        schemas.append(schema)
        at = end
        while at < len(text) and text[at].isspace():
            at += 1
    return text[:start].strip(), normalize_tools(schemas, source, "system")


def split_msagent(value: str, source: str, where: str) -> list[Message]:
    """One MSAgent-Bench assistant value → assistant messages (text and calls) and tool messages, in order."""
    out: list[Message] = []
    pos = 0
    for block in _MS_BLOCK.finditer(value):
        text = value[pos:block.start()].strip()
        pos = block.end()
        if block.group(1) is not None:
            calls = _ms_calls(block.group(1), source, where)
            last = out[-1] if out else None
            if not text and last is not None and last.role == "assistant" and last.tool_calls:
                last.tool_calls.extend(calls)
            else:
                out.append(Message("assistant", text, tool_calls=calls))
        else:
            if text:
                out.append(Message("assistant", text))
            out.append(Message("tool", _unfence(block.group(2))))
    tail = value[pos:].strip()
    if tail:
        out.append(Message("assistant", tail))
    return out


def _ms_calls(text: str, source: str, where: str) -> list[dict[str, Any]]:
    body = _unfence(text)
    try:
        value = json.loads(body)
    except json.JSONDecodeError as exc:
        raise DataError(source, where, f"a <|startofthink|> call must hold JSON {{api_name, parameters}}: {exc.msg}") \
            from None
    items = value if isinstance(value, list) else [value]
    items = [{"name": v["api_name"], "arguments": v.get("parameters", {})} if isinstance(v, dict) and "api_name" in v
             else v for v in items]
    return calls_from_text(items, source, where)


def _unfence(text: str) -> str:
    """The body of a ```JSON ... ``` fence (the text itself when it has none)."""
    fenced = _FENCE.match(text)
    return (fenced.group(1) if fenced else text).strip()
