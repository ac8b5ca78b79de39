"""The OpenAPI document of `ember serve`: the responses each route really sends, and nothing it does not.

FastAPI documents request bodies from the pydantic models in `protocol.py`; the response shapes are described
here (they are built as plain dicts for speed) and attached to each route with the error statuses it can answer:
400 (invalid JSON or value), 401 (API key), 404 (unknown model), 413 (body over `--max-request-bytes`) and 500
(generation failed). FastAPI's automatic 422 is removed: Ember answers validation errors with OpenAI's 400.
"""

from __future__ import annotations

from typing import Any, Literal, Optional

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: Optional[str]
    code: Optional[str]


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: Optional[list[int]]


class TokenLogprobs(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: Optional[list[TokenLogprobs]]
    refusal: None = None


class CalledFunction(BaseModel):
    name: str
    arguments: str  # a JSON object, written as a string


class ToolCall(BaseModel):
    id: str
    type: Literal["function"]
    function: CalledFunction


class AssistantMessage(BaseModel):
    """`content` is null only when the answer is tool calls with no text before them."""

    role: Literal["assistant"]
    content: Optional[str]
    tool_calls: Optional[list[ToolCall]] = None  # present when the request had tools and the answer called them


FinishReason = Literal["stop", "length", "cancelled", "tool_calls"]


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: FinishReason
    logprobs: Optional[ChatLogprobs]


class ChatCompletion(BaseModel):
    """`stream: false`. With `stream: true` the body is `text/event-stream`: `data: {chat.completion.chunk}` lines
    (deltas of `role` then `content` — with tools, then `tool_calls` deltas: `{index, id, type, function: {name,
    arguments: ""}}` and `{index, function: {arguments}}` per call — one chunk per choice with its `finish_reason`, with
    `stream_options.include_usage` a last chunk with `usage` and no choices), then `data: [DONE]`."""

    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class TextLogprobs(BaseModel):
    tokens: list[str]
    token_logprobs: list[float]
    top_logprobs: list[dict[str, float]]
    text_offset: list[int]


class TextChoice(BaseModel):
    index: int
    text: str
    finish_reason: FinishReason
    logprobs: Optional[TextLogprobs]


class TextCompletion(BaseModel):
    """`stream: false`. With `stream: true`: `text/event-stream` of `data: {text_completion}` chunks, then
    `data: [DONE]`."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[TextChoice]
    usage: Usage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    context_length: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Health(BaseModel):
    status: Literal["ok"]
    model: str
    jobs: int
    rows: int
    steps: int
    row_steps: int
    completion_tokens: int
    peak_rows: int
    waiting: int
    running: int


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


ERRORS = {
    400: _error("Invalid JSON, an invalid or unsupported value, prompt + max_tokens over the context length, or "
                "more sequences than one request may ask for (`param` names the field)"),
    401: _error("Missing or wrong API key (when the server has one)"),
    413: _error("Request body larger than --max-request-bytes"),
    500: _error("Generation failed"),
}
MODEL_ERRORS = {**ERRORS, 404: _error("The `model` is not the one this server serves")}
# OpenAPI 3.1 reads an event stream's `schema` as the schema of one event.
STREAM = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"],
    "properties": {"event": {"type": "string"}, "id": {"type": "string"},
                   "data": {"type": "string", "description": "one JSON chunk (chat.completion.chunk or "
                                                             "text_completion), or [DONE] at the end"}}}}}


def generation_responses(model: type[BaseModel]) -> dict[int | str, dict[str, Any]]:
    return {200: {"model": model, "content": STREAM}, **MODEL_ERRORS}


def document(app: FastAPI, images: bool = True, vocab_size: Optional[int] = None) -> dict[str, Any]:
    """The app's OpenAPI document, without FastAPI's 422 (never sent) and its schemas, made true for the model it
    serves: `images=False` (a model that takes no images) leaves out the `image_url` content part such a server
    refuses, and `vocab_size` bounds token ids (prompts given as ids, `logit_bias` keys) to the vocabulary."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path in doc.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        schemas = doc.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        if not images:
            _drop_schemas(doc, {name for name in schemas if name.startswith("ImageUrl")})
        if vocab_size:
            _bound_token_ids(doc, vocab_size)
        app.openapi_schema = doc
    return app.openapi_schema


def _drop_schemas(doc: dict[str, Any], names: set[str]) -> None:
    """Remove the named component schemas and every `anyOf`/`oneOf` branch that refers to them."""
    refs = {f"#/components/schemas/{name}" for name in names}
    for name in names:
        doc["components"]["schemas"].pop(name, None)

    def prune(node: dict[str, Any]) -> None:
        for key in ("anyOf", "oneOf"):
            if isinstance(node.get(key), list):
                node[key] = [branch for branch in node[key] if branch.get("$ref") not in refs]

    _visit(doc, prune)


def _bound_token_ids(doc: dict[str, Any], vocab_size: int) -> None:
    """Token ids as integers (`minimum` 0, `exclusiveMaximum` 2^63) and as `logit_bias` keys (decimal strings) get
    the vocabulary's bound: a schema-valid id is then one the model has."""
    from ember.serving.protocol import INT64

    pattern = f"^{_below(vocab_size)}$"

    def bound(node: dict[str, Any]) -> None:
        if node.get("type") == "integer" and node.get("minimum") == 0 and node.get("exclusiveMaximum") == INT64:
            node["exclusiveMaximum"] = vocab_size
        names = node.get("propertyNames")
        if isinstance(names, dict) and names.get("pattern") == "^[0-9]{1,18}$":
            names["pattern"] = pattern

    _visit(doc, bound)


def _visit(node: Any, change) -> None:
    """Call `change` on every object of a JSON document, outermost first."""
    if isinstance(node, dict):
        change(node)
        for value in node.values():
            _visit(value, change)
    elif isinstance(node, list):
        for value in node:
            _visit(value, change)


def _below(n: int) -> str:
    """A regular expression for the decimal numbers 0 .. n-1 (no leading zeros)."""
    top = str(n - 1)
    branches = ["0"] if n - 1 >= 0 else []
    for length in range(1, len(top)):  # every number with fewer digits than n-1
        branches.append("[1-9]" + "[0-9]" * (length - 1) if length > 1 else "[1-9]")
    for i in range(len(top)):  # same length: equal to n-1 up to digit i, smaller at digit i
        digit = int(top[i])
        low = 1 if i == 0 else 0
        if digit > low:
            branches.append(top[:i] + f"[{low}-{digit - 1}]" + "[0-9]" * (len(top) - i - 1))
    branches.append(top)
    unique = list(dict.fromkeys(b for b in branches if b))
    return "(?:" + "|".join(unique) + ")"
