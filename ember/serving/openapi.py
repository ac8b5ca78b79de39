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


def document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, without FastAPI's 422 (never sent) and its schemas."""
    if app.openapi_schema is None:
        doc = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for path in doc.get("paths", {}).values():
            for operation in path.values():
                operation.get("responses", {}).pop("422", None)
        schemas = doc.get("components", {}).get("schemas", {})
        for name in ("HTTPValidationError", "ValidationError"):
            schemas.pop(name, None)
        app.openapi_schema = doc
    return app.openapi_schema
