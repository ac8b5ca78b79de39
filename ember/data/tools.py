"""Tool calling: the one shape of tool schemas and calls, the text form of calls, and parsing a model's calls back.

Every reader turns its data's tools and calls into one shape, so templates, the cache and serving see the same thing:

- a tool is OpenAI's `{"type": "function", "function": {"name", "description"?, "parameters"?}}` (the flat glaive /
  LLaMA-Factory `{"name", "description", "parameters"}` is wrapped);
- a call is `{"type": "function", "function": {"name": str, "arguments": dict}}` (+ `"id"` when the data has one):
  arguments are an object, never the JSON string OpenAI sends, so a template's `arguments | tojson` writes them
  once. Malformed tools or calls raise `DataError` naming the record and field.

The text form is Hermes-style, the format of Qwen2.5 and of the `hermes` template Ember ships: a call is
`<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>` and a result `<tool_response>\\n...\\n</tool_response>`.
Templates without tool support get calls, results and the tool list in that form as plain message text, so a model
trained with any template answers in the one format `parse_tool_calls` (and `ember serve`) reads back.
"""

from __future__ import annotations

import ast
import json
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from ember.errors import DataError

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
RESULT_OPEN, RESULT_CLOSE = "<tool_response>", "</tool_response>"
# glaive writes arguments as a single-quoted JSON string: {"name": "f", "arguments": '{"a": 1}'}
_QUOTED_ARGUMENTS = re.compile(r"""("arguments"\s*:\s*)'(.*)'(\s*}\s*)$""", re.DOTALL)


# -- schemas and calls -------------------------------------------------------------------------------------------
def normalize_tools(value: Any, source: str, where: str = "tools") -> Optional[list[dict[str, Any]]]:
    """The tool list in OpenAI's shape, or None when there is none. `value` may be a JSON string (LLaMA-Factory and
    ms-swift store it so), a list of OpenAI tools, or a list of flat `{name, description, parameters}` schemas."""
    if value is None or value == "" or value == []:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(source, where, f"expected a JSON list of tool schemas: {exc.msg} (column {exc.colno})") \
                from None
        if value is None or value == []:
            return None
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise DataError(source, where, f"expected a list of tool schemas, got {type(value).__name__}")
    return [_tool(item, source, f"{where}[{i}]") for i, item in enumerate(value)]


def _tool(item: Any, source: str, where: str) -> dict[str, Any]:
    if not isinstance(item, dict):
        raise DataError(source, where, f"expected a tool schema object, got {type(item).__name__}")
    if "function" in item or "type" in item:
        kind = item.get("type", "function")
        if kind != "function":
            raise DataError(source, f"{where}.type", f"only function tools are supported, got {kind!r}")
        function, where = item.get("function"), f"{where}.function"
    else:
        function = item
    if not isinstance(function, dict):
        raise DataError(source, where, f"expected an object with name/description/parameters, got "
                                       f"{type(function).__name__}")
    name = function.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DataError(source, f"{where}.name", f"a tool needs a non-empty name string, got {name!r}")
    parameters = function.get("parameters")
    if parameters is not None and not isinstance(parameters, dict):
        raise DataError(source, f"{where}.parameters", f"expected a JSON schema object, got {type(parameters).__name__}")
    return {"type": "function", "function": dict(function)}


def normalize_call(value: Any, source: str, where: str) -> dict[str, Any]:
    """One call in the canonical shape from OpenAI's `{id?, type, function: {name, arguments}}` or a flat
    `{name, arguments}` (`parameters` is read as `arguments`, as some agent data names them)."""
    if not isinstance(value, dict):
        raise DataError(source, where, f"expected a tool call object with a name and arguments, got "
                                       f"{type(value).__name__}")
    function = value.get("function", value)
    if "function" in value:
        where = f"{where}.function"
    if not isinstance(function, dict):
        raise DataError(source, where, f"expected an object with name and arguments, got {type(function).__name__}")
    name = function.get("name")
    if not isinstance(name, str) or not name.strip():
        raise DataError(source, f"{where}.name", f"a tool call needs a non-empty function name, got {name!r}")
    arguments = function.get("arguments", function.get("parameters", {}))
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as exc:
            raise DataError(source, f"{where}.arguments", f"arguments are not valid JSON: {exc.msg} "
                                                          f"(column {exc.colno})") from None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise DataError(source, f"{where}.arguments", f"arguments must be a JSON object, got "
                                                      f"{type(arguments).__name__}")
    call: dict[str, Any] = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if isinstance(value.get("id"), str) and value["id"]:
        call = {"id": value["id"], **call}
    return call


def normalize_calls(value: Any, source: str, where: str = "tool_calls") -> Optional[list[dict[str, Any]]]:
    """A message's `tool_calls` list in the canonical shape (None for none)."""
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise DataError(source, where, f"expected a list of tool calls, got {type(value).__name__}")
    return [normalize_call(c, source, f"{where}[{i}]") for i, c in enumerate(value)]


def calls_from_text(text: Any, source: str, where: str) -> list[dict[str, Any]]:
    """The calls written as JSON text in agent data: one `{name, arguments}` object or a list of them (sharegpt
    `function_call`, ms-swift `tool_call`, glaive `<functioncall>` with its single-quoted arguments)."""
    if isinstance(text, (dict, list)):
        value = text
    elif not isinstance(text, str):
        raise DataError(source, where, f"expected the call as JSON text, got {type(text).__name__}")
    else:
        value = _loads_call(text.strip())
        if value is None:
            raise DataError(source, where, f"a tool call must be JSON {{\"name\": ..., \"arguments\": {{...}}}} "
                                           f"(or a list of them), got {_clip(text)!r}")
    items = value if isinstance(value, list) else [value]
    if not items:
        raise DataError(source, where, "an empty list of tool calls")
    return [normalize_call(c, source, where if len(items) == 1 else f"{where}[{i}]") for i, c in enumerate(items)]


def _loads_call(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    quoted = _QUOTED_ARGUMENTS.search(text)
    if quoted:
        try:
            head = json.loads(text[:quoted.start(2) - 1] + "null" + quoted.group(3))
            head["arguments"] = json.loads(quoted.group(2))
            return head
        except (json.JSONDecodeError, TypeError):
            return None
    return None


def literal_list(value: str, source: str, where: str) -> list:
    """A list stored as text: JSON, or a Python literal (MSAgent-Bench stores `conversations` with `repr`)."""
    try:
        out = json.loads(value)
    except json.JSONDecodeError:
        try:
            out = ast.literal_eval(value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise DataError(source, where, "expected a list (or a JSON / Python literal text of one)") from None
    if not isinstance(out, list):
        raise DataError(source, where, f"expected a list, got {type(out).__name__}")
    return out


def _clip(text: str, n: int = 60) -> str:
    return text if len(text) <= n else text[:n] + "..."


# -- the text form -----------------------------------------------------------------------------------------------
def call_json(call: dict[str, Any]) -> str:
    """`{"name": ..., "arguments": {...}}` as one line (json.dumps separators, as a template's `tojson` writes).
    Arguments given as a string (OpenAI's wire form) are written as that string, as templates do."""
    function = call.get("function", call)
    arguments = function.get("arguments", {})
    if isinstance(arguments, str):
        return f'{{"name": {json.dumps(function["name"], ensure_ascii=False)}, "arguments": {arguments or "{}"}}}'
    return json.dumps({"name": function["name"], "arguments": arguments}, ensure_ascii=False)


def calls_text(calls: list[dict[str, Any]]) -> str:
    return "\n".join(f"{CALL_OPEN}\n{call_json(c)}\n{CALL_CLOSE}" for c in calls)


def result_text(content: str) -> str:
    return f"{RESULT_OPEN}\n{content}\n{RESULT_CLOSE}"


def tools_text(tools: list[dict[str, Any]]) -> str:
    """The tool list as system-prompt text, for templates that take no `tools`."""
    schemas = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
    return ("# Tools\n\nYou may call one or more of these functions to help with the request. Their JSON schemas "
            f"are inside <tools></tools>:\n<tools>\n{schemas}\n</tools>\n\nTo call a function, answer with one "
            f"{CALL_OPEN}{CALL_CLOSE} block per call, holding a JSON object with the function's name and "
            f"arguments:\n{CALL_OPEN}\n{{\"name\": <function-name>, \"arguments\": <args-json-object>}}\n{CALL_CLOSE}")


# -- reading a model's answer back -------------------------------------------------------------------------------
@dataclass
class ParsedAnswer:
    """An answer split into its text and its calls (canonical shape); `calls` is empty for a plain answer."""

    content: str
    calls: list[dict[str, Any]] = field(default_factory=list)


def parse_tool_calls(text: str) -> ParsedAnswer:
    """Split a model's answer into text + calls. Calls are `<tool_call>` blocks, each one JSON object with a
    string `name` and object `arguments` (a JSON string of one is read too), only whitespace between and after
    them; the last block may lack its `</tool_call>`. Anything else — no block, bad JSON, text after the calls —
    leaves the whole answer as text with no calls."""
    start = text.find(CALL_OPEN)
    if start < 0:
        return ParsedAnswer(text)
    calls, rest = [], text[start:]
    while rest:
        if not rest.startswith(CALL_OPEN):
            return ParsedAnswer(text)
        body = rest[len(CALL_OPEN):]
        end = body.find(CALL_CLOSE)
        payload, rest = (body, "") if end < 0 else (body[:end], body[end + len(CALL_CLOSE):].lstrip())
        try:
            obj = json.loads(payload)
            if not isinstance(obj, dict) or not {"arguments", "parameters"} & obj.keys():
                return ParsedAnswer(text)
            call = normalize_call(obj, "answer", "tool_call")
        except (json.JSONDecodeError, DataError):
            return ParsedAnswer(text)
        calls.append(call)
    return ParsedAnswer(text[:start].rstrip(), calls)


class CallStream:
    """Parses an answer that arrives in pieces: text before any `<tool_call>` passes through at once (less a tail
    that may still become the tag); from the tag on everything is held until `finish`, which parses the whole
    answer exactly as `parse_tool_calls` does. So the text a client is shown plus the calls it gets at the end are
    the non-streamed answer, piece for piece."""

    def __init__(self) -> None:
        self.text = ""
        self.sent = 0  # characters of `text` already passed on
        self.holding = False

    def feed(self, piece: str) -> str:
        """The text that can be shown now."""
        self.text += piece
        if self.holding:
            return ""
        at = self.text.find(CALL_OPEN, self.sent)
        if at >= 0:
            self.holding = True
            end = at
        else:
            end = len(self.text) - _partial_tag(self.text, self.sent)
        # trailing whitespace waits too: before a tag it is not part of the content (parse_tool_calls strips it)
        end = max(self.sent, len(self.text[:end].rstrip()))
        out, self.sent = self.text[self.sent:end], max(self.sent, end)
        return out

    def finish(self) -> tuple[str, list[dict[str, Any]]]:
        """(text still to show, calls) once the answer is complete."""
        parsed = parse_tool_calls(self.text)
        if parsed.calls:
            return parsed.content[self.sent:], parsed.calls
        return self.text[self.sent:], []


def _partial_tag(text: str, since: int) -> int:
    """Length of the longest tail of `text` (after `since`) that is a proper prefix of `<tool_call>`."""
    for n in range(min(len(CALL_OPEN) - 1, len(text) - since), 0, -1):
        if CALL_OPEN.startswith(text[-n:]):
            return n
    return 0
