"""Tool calls over the OpenAI API: the `tools` / `tool_choice` fields, what they change, and answers in OpenAI's shape.

- `tools` (function schemas) are rendered into the prompt by the model's chat template (`tools=`), or as Ember's
  text form for a template that takes none (`ember.data.tools`), exactly as training rendered them.
- The answer is read back with `parse_tool_calls` (Hermes-style `<tool_call>` JSON blocks): calls become OpenAI
  `tool_calls` (arguments as a JSON string, ids `call_...`) with `finish_reason: "tool_calls"`; an answer that does
  not parse is returned as text with the finish reason generation had (`stop`, or `length`).
- `tool_choice`: `auto` (default with tools) lets the model choose; `none` leaves the tools out of the prompt and
  reads no calls; `required` or a named function constrains decoding (llguidance) to `<tool_call>` blocks whose JSON
  matches one of the allowed functions' parameter schemas (one block when `parallel_tool_calls` is false).
- Streaming: text before a call streams as usual; from `<tool_call>` on the answer is held, and when it ends each
  call is sent as OpenAI streams them (a delta with the id, type and name, then one with the arguments), or the
  held text as content when it does not parse. The deltas join to exactly the non-streamed answer.
- Earlier turns: assistant messages carry `tool_calls` (arguments a JSON object string), `tool` messages the results;
  `tool_calls` on other roles are ignored, like any field a role does not have.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from ember.data.tools import CALL_CLOSE, CALL_OPEN, CallStream, parse_tool_calls

MAX_TOOLS = 128
FunctionName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_\-.]{1,64}$")]


class FunctionSchema(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: FunctionName
    description: Optional[str] = None
    parameters: Optional[dict[str, Any]] = None  # a JSON schema (object); null: no parameters
    strict: Optional[bool] = None  # accepted; `required` / a named choice always constrain to the schema


class Tool(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionSchema


class FunctionRef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: FunctionName


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionRef


ToolChoice = Union[Literal["none", "auto", "required"], NamedToolChoice, None]


class CalledFunction(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Annotated[str, StringConstraints(min_length=1)]
    arguments: str = Field(description="the arguments as a JSON object, written as a string (as OpenAI sends them)")


class ToolCallIn(BaseModel):
    """A call an earlier assistant turn made (sent back by the client with the results)."""

    model_config = ConfigDict(extra="ignore")
    id: Optional[str] = None
    type: Literal["function"] = "function"
    function: CalledFunction

    def canonical(self) -> dict[str, Any]:
        """The call in `ember.data.tools`' shape, as training data holds calls: arguments as an object (a string
        that is not a JSON object — OpenAI accepts any — stays the string, and is written as it is)."""
        arguments: Any = self.function.arguments
        try:
            parsed = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            parsed = None
        call: dict[str, Any] = {"type": "function", "function": {
            "name": self.function.name, "arguments": parsed if isinstance(parsed, dict) else arguments}}
        return {"id": self.id, **call} if self.id else call


def check_choice(tools: Optional[list[Tool]], choice: ToolChoice) -> None:
    """ValueError (a 400) when `tool_choice` names a function that is not among the tools. Without tools,
    `tool_choice` is ignored: there is nothing to call."""
    names = [t.function.name for t in tools or []]
    if names and isinstance(choice, NamedToolChoice) and choice.function.name not in names:
        raise ValueError(f"tool_choice names the function '{choice.function.name}', which is not in `tools` (the "
                         f"tools are {', '.join(names)})")


@dataclass
class ToolMode:
    """What a request's tools change: the tool list the prompt shows, whether answers are read for calls, and the
    functions a call is constrained to (None: unconstrained)."""

    tools: Optional[list[dict[str, Any]]] = None
    parse: bool = False
    forced: Optional[list[dict[str, Any]]] = None
    parallel: bool = True


def tool_mode(tools: Optional[list[Tool]], choice: ToolChoice, parallel: Optional[bool],
              call_format: Optional[str]) -> ToolMode:
    """The request's `ToolMode`; `call_format` is the renderer's (`Renderer.tool_call_format`).

    Raises:
        ValueError: tools were sent to a model whose template writes calls in a format Ember cannot read back.
    """
    if not tools or choice == "none":
        return ToolMode()
    if call_format != "hermes":
        raise ValueError("this model's chat template writes tool calls in its own format, which ember serve cannot "
                         "read back (it reads Hermes-style <tool_call> JSON blocks); train it with data.template: "
                         "hermes, or a template without tool support, to serve tools")
    schemas = [t.model_dump(exclude_none=True) for t in tools]
    forced = None
    if choice == "required":
        forced = schemas
    elif isinstance(choice, NamedToolChoice):
        forced = [s for s in schemas if s["function"]["name"] == choice.function.name]
    return ToolMode(schemas, True, forced, parallel is not False)


def call_grammar(mode: ToolMode) -> str:
    """An llguidance Lark grammar: `<tool_call>` blocks (one unless parallel calls are allowed), each a JSON object
    `{"name": <an allowed function>, "arguments": <its parameters schema>}`, written with json.dumps' separators."""
    assert mode.forced
    options = [{"type": "object", "properties": {"name": {"const": t["function"]["name"]},
                                                 "arguments": t["function"].get("parameters") or {"type": "object"}},
                "required": ["name", "arguments"], "additionalProperties": False} for t in mode.forced]
    schema = {"anyOf": options} if len(options) > 1 else options[0]
    schema = {**schema, "x-guidance": {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}}
    rule = "start: call (\"\\n\" call)*" if mode.parallel else "start: call"
    return (f"{rule}\ncall: {json.dumps(CALL_OPEN + chr(10))} body {json.dumps(chr(10) + CALL_CLOSE)}\n"
            f"body: %json {json.dumps(schema)}\n")


def openai_calls(calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Calls as OpenAI returns them: an id each, arguments as a JSON string."""
    return [{"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
             "function": {"name": c["function"]["name"],
                          "arguments": json.dumps(c["function"]["arguments"], ensure_ascii=False)}} for c in calls]


def answer_message(text: str, finish_reason: str) -> tuple[dict[str, Any], str]:
    """The assistant message and finish reason of one answer read for calls."""
    parsed = parse_tool_calls(text)
    if not parsed.calls:
        return {"role": "assistant", "content": text}, finish_reason
    return {"role": "assistant", "content": parsed.content or None,
            "tool_calls": openai_calls(parsed.calls)}, "tool_calls"


def with_tool_calls(body: dict[str, Any], texts: list[str]) -> dict[str, Any]:
    """A chat.completion body with each choice's answer read for calls."""
    for choice, text in zip(body["choices"], texts, strict=True):
        choice["message"], choice["finish_reason"] = answer_message(text, choice["finish_reason"])
    return body


class ChoiceCalls:
    """The streamed view of `answer_message` for one choice."""

    def __init__(self) -> None:
        self.stream = CallStream()

    def feed(self, piece: str) -> str:
        """Content that can be sent now."""
        return self.stream.feed(piece)

    def finish(self, finish_reason: str) -> tuple[str, list[dict[str, Any]], str]:
        """(content still to send, the tool-call deltas, the finish reason) once the answer is complete."""
        rest, calls = self.stream.finish()
        deltas: list[dict[str, Any]] = []
        for i, call in enumerate(openai_calls(calls)):
            function = call["function"]
            deltas.append({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                           "function": {"name": function["name"], "arguments": ""}}]})
            deltas.append({"tool_calls": [{"index": i, "function": {"arguments": function["arguments"]}}]})
        return rest, deltas, "tool_calls" if calls else finish_reason
