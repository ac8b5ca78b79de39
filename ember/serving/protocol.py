"""The OpenAI wire format Ember speaks: request schemas, response objects and error bodies.

Requests are validated here (ranges, types, unsupported features), so the endpoints only translate. Unknown
extra fields are ignored, as most OpenAI-compatible servers do; features that would change the answer and that
Ember does not implement (tools, logprobs, penalties, images) are refused with a 400 that says so.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ember.inference.completion import Completion

MAX_CHOICES = 8
MAX_STOP = 4


class APIError(Exception):
    """An error a client sees as OpenAI's `{"error": {...}}` body with `status`."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: Optional[str] = None,
                 code: Optional[str] = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str = "invalid_request_error", param: Optional[str] = None,
               code: Optional[str] = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields both endpoints share."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: Union[str, list[str], None] = Field(None, validate_default=True)
    seed: Optional[int] = None
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: Optional[float] = Field(None, ge=-2, le=2)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    user: Optional[str] = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value):
        if value is None:
            return []
        values = [value] if isinstance(value, str) else list(value)
        if len(values) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed, got {len(values)}")
        if any(not s for s in values):
            raise ValueError("stop sequences must not be empty strings")
        return values

    def refuse_unsupported(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                raise APIError(400, f"{name} is not supported by ember serve; leave it unset or 0", param=name)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: Optional[str] = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Union[str, list[ContentPart], None] = None

    def text(self, index: int) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        parts = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise APIError(400, f"messages[{index}].content: only text parts are supported, got '{part.type}'",
                               param=f"messages[{index}].content")
            parts.append(part.text)
        return "".join(parts)


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: Optional[bool] = None
    tools: Optional[list[dict[str, Any]]] = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        if self.logprobs:
            raise APIError(400, "logprobs are not supported by ember serve", param="logprobs")
        if self.tools:
            raise APIError(400, "tools are not supported by ember serve yet; describe them in a system message",
                           param="tools")

    def as_messages(self) -> list[dict[str, str]]:
        # `developer` is the newer name OpenAI gives the system role.
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text(i)}
                for i, m in enumerate(self.messages)]

    @property
    def token_limit(self) -> Optional[int]:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingRequest):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    echo: bool = False
    suffix: Optional[str] = None
    logprobs: Optional[int] = None

    def refuse_unsupported(self) -> None:
        super().refuse_unsupported()
        for name in ("echo", "suffix", "logprobs"):
            if getattr(self, name):
                raise APIError(400, f"{name} is not supported by ember serve", param=name)

    def prompts(self) -> list[Union[str, list[int]]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise APIError(400, "prompt must not be empty", param="prompt")
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


# -- responses ---------------------------------------------------------------------------------------------------
def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(completions: list[Completion], prompt_tokens: int) -> dict[str, int]:
    done = sum(c.completion_tokens for c in completions)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}


def envelope(rid: str, kind: str, model: str, choices: list[dict], usage_: Optional[dict] = None,
             created: Optional[int] = None) -> dict[str, Any]:
    """The fields every response and stream chunk share."""
    body: dict[str, Any] = {"id": rid, "object": kind, "created": created or int(time.time()), "model": model,
                            "choices": choices}
    if usage_ is not None:
        body["usage"] = usage_
    return body


def chat_response(rid: str, model: str, completions: list[Completion], prompt_tokens: int) -> dict[str, Any]:
    choices = [{"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
                "logprobs": None} for i, c in enumerate(completions)]
    return envelope(rid, "chat.completion", model, choices, usage(completions, prompt_tokens))


def chat_chunk(rid: str, model: str, created: int, index: Optional[int] = None, delta: Optional[dict] = None,
               finish_reason: Optional[str] = None, usage_: Optional[dict] = None) -> dict[str, Any]:
    """One SSE event; `index=None` makes the final usage-only chunk (no choices)."""
    choices = [] if index is None else [{"index": index, "delta": delta or {}, "finish_reason": finish_reason,
                                         "logprobs": None}]
    return envelope(rid, "chat.completion.chunk", model, choices, usage_, created)


def text_response(rid: str, model: str, completions: list[Completion], prompt_tokens: int) -> dict[str, Any]:
    choices = [{"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
               for i, c in enumerate(completions)]
    return envelope(rid, "text_completion", model, choices, usage(completions, prompt_tokens))


def text_chunk(rid: str, model: str, created: int, index: Optional[int] = None, text: str = "",
               finish_reason: Optional[str] = None, usage_: Optional[dict] = None) -> dict[str, Any]:
    choices = [] if index is None else [{"index": index, "text": text, "finish_reason": finish_reason,
                                         "logprobs": None}]
    return envelope(rid, "text_completion", model, choices, usage_, created)
