"""The OpenAI wire format Ember speaks: request schemas, response objects and error bodies.

Requests are validated here, and the schemas say exactly what is accepted, so the OpenAPI document built from
them is true: a request that fits the schema is answered, except where the answer depends on the model (prompt
+ `max_tokens` over the context, token ids or `logit_bias` keys outside the vocabulary, an unknown `model`, a
JSON schema the constraint library rejects, more rows than one request may hold) — those are the documented 400s
and 404s. Unknown extra fields are ignored, as most OpenAI-compatible servers do; known fields that would change
the answer and that Ember does not implement (the legacy `functions`, audio, `best_of` > 1, `suffix`, ...) admit
only their "off" value, and anything else is refused with a 400 that names the field. Tools: `ember.serving.tools`.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import (AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StringConstraints,
                      ValidationInfo, WithJsonSchema, field_validator, model_validator)

from ember.data.images import IMAGE_MARKER
from ember.inference.completion import MIN_TEMPERATURE, RANGES, Completion, TokenLogprob, option_problem
from ember.serving.tools import MAX_TOOLS, Tool, ToolCallIn, ToolChoice, check_choice

MAX_CHOICES = 8
MAX_STOP = 4
MAX_TOP_LOGPROBS = 20
MAX_LOGIT_BIAS = 300
INT64 = 2**63


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


# -- field types -------------------------------------------------------------------------------------------------
def _no_surrogates(value: str) -> str:
    """JSON can spell a lone UTF-16 surrogate (`"\\ud800"`); no tokenizer can encode it, so it is invalid input."""
    for i, ch in enumerate(value):
        if "\ud800" <= ch <= "\udfff":
            raise ValueError(f"the text holds a lone UTF-16 surrogate (U+{ord(ch):04X}) at character {i}; "
                             "send valid Unicode")
    return value


def reject_surrogates(data: Any) -> None:
    """Refuse a lone surrogate anywhere in a request, naming where (before any field is validated: pydantic would
    otherwise report it as an unreadable string in every branch of a union)."""
    stack = [(data, "")]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            try:
                _no_surrogates(value)
            except ValueError as exc:
                raise APIError(400, f"Invalid value for '{path}': {exc}", param=path or None) from None
        elif isinstance(value, dict):
            stack += [(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()]
            stack += [(k, path) for k in value if isinstance(k, str)]
        elif isinstance(value, list):
            stack += [(v, f"{path}.{i}" if path else str(i)) for i, v in enumerate(value)]


Text = Annotated[str, AfterValidator(_no_surrogates)]
NonEmptyText = Annotated[str, StringConstraints(min_length=1), AfterValidator(_no_surrogates)]
TokenId = Annotated[int, Field(ge=0, lt=INT64)]


def _temperature(value: Optional[float]) -> Optional[float]:
    problem = option_problem("temperature", value)
    if problem:
        raise ValueError(f"temperature {value!r} {problem}")
    return value


def _within(option: str) -> dict[str, Any]:
    """Field constraints of a request field from the range chat and the server's flags accept for `option`."""
    return vars(RANGES[option])


Temperature = Annotated[
    Optional[float], Field(**_within("temperature")), AfterValidator(_temperature),
    WithJsonSchema({"anyOf": [{"type": "number", "enum": [0]},
                              {"type": "number", "minimum": MIN_TEMPERATURE, "maximum": RANGES["temperature"].le},
                              {"type": "null"}],
                    "description": "0 = greedy; otherwise sample at this temperature (unset: server default)"}),
]
LogitBias = Annotated[
    Optional[dict[str, float]],
    WithJsonSchema({"anyOf": [{"type": "object", "maxProperties": MAX_LOGIT_BIAS,
                               "propertyNames": {"pattern": "^[0-9]{1,18}$"},
                               "additionalProperties": {"type": "number", "minimum": -100, "maximum": 100}},
                              {"type": "null"}],
                    "description": "token id → bias added to its logit (-100 bans, 100 forces)"}),
]


NULL = {"type": "null"}
EMPTY_LIST_OR_NULL = {"anyOf": [{"type": "array", "maxItems": 0}, NULL]}


def _refused(what: str, schema: dict = NULL, hint: str = ""):
    """A field that changes the answer and that Ember does not implement: only its "off" value (null, or an empty
    list where the schema allows one) is accepted; anything else is a 400 naming the field."""
    allow_empty = schema is EMPTY_LIST_OR_NULL

    def check(value: Any) -> Any:
        if value is None or (allow_empty and isinstance(value, list) and not value):
            return value
        raise ValueError(f"{what} is not supported by ember serve{hint}")

    return Annotated[Any, BeforeValidator(check), WithJsonSchema(schema)]


def _best_of(value: Any) -> Any:
    if value is None or (type(value) is int and value == 1):
        return value
    raise ValueError("best_of other than 1 is not supported by ember serve; ask for `n` choices instead")


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(BaseModel):
    """Fields both endpoints share."""

    model_config = ConfigDict(extra="ignore")

    model: Text
    max_tokens: Optional[int] = Field(None, **_within("max_new_tokens"))
    temperature: Temperature = None
    top_p: Optional[float] = Field(None, **_within("top_p"))
    n: int = Field(1, ge=1, le=MAX_CHOICES)
    stop: Union[NonEmptyText, Annotated[list[NonEmptyText], Field(max_length=MAX_STOP)], None] = None
    seed: Optional[int] = Field(None, ge=-INT64, lt=INT64)
    stream: bool = False
    stream_options: Optional[StreamOptions] = None
    presence_penalty: Optional[float] = Field(None, **_within("presence_penalty"))
    frequency_penalty: Optional[float] = Field(None, **_within("frequency_penalty"))
    logit_bias: LogitBias = None
    user: Optional[Text] = None
    best_of: Annotated[Any, BeforeValidator(_best_of),
                       WithJsonSchema({"anyOf": [{"type": "integer", "enum": [1]}, NULL]})] = None

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data):
        reject_surrogates(data)
        return data

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value):
        if value is None:
            return None
        if len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} token biases are allowed, got {len(value)}")
        out = {}
        for key, bias in value.items():
            if not (key.isascii() and key.isdigit() and len(key) <= 18):
                raise ValueError(f"keys are token ids written as decimal strings, got {key!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"biases lie in -100..100, got {bias} for token {key}")
            out[int(key)] = float(bias)
        return out

    @property
    def stops(self) -> list[str]:
        return [] if self.stop is None else [self.stop] if isinstance(self.stop, str) else list(self.stop)

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["text"]
    text: Text


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="ignore")
    url: Text  # a data:image/...;base64 URL: the server fetches nothing
    detail: Optional[Literal["auto", "low", "high"]] = None  # accepted; the model's processor decides the resolution


class ImageUrlPart(BaseModel):
    """An image for an image-text model, as OpenAI's `image_url` content part."""

    model_config = ConfigDict(extra="ignore")
    type: Literal["image_url"]
    image_url: ImageUrl


def _text_parts_only(value: Any) -> Any:
    if isinstance(value, list):
        for part in value:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind is not None and kind not in ("text", "image_url"):
                raise ValueError(f"only text and image_url parts are supported, got '{kind}'")
    return value


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[Union[Text, list[Annotated[Union[TextPart, ImageUrlPart], Field(discriminator="type")]], None],
                       BeforeValidator(_text_parts_only)] = None
    name: Optional[Text] = None
    tool_calls: Optional[list[ToolCallIn]] = None  # an assistant turn's calls (ignored on other roles)
    tool_call_id: Optional[Text] = None
    function_call: _refused("function_call in messages", hint="; send tool_calls") = None

    def text(self) -> str:
        """The content as text; each image part stands as an `<image>` marker where it was."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text if part.type == "text" else IMAGE_MARKER for part in self.content)

    def images(self) -> list[bytes]:
        """The encoded images of the image_url parts (data URLs only), in order."""
        if not isinstance(self.content, list):
            return []
        return [_image(part.image_url.url) for part in self.content if part.type == "image_url"]


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: Text = "response"
    description: Optional[Text] = None
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: Optional[bool] = None


class TextFormat(BaseModel):
    type: Literal["text"]


class JsonObjectFormat(BaseModel):
    type: Literal["json_object"]


class JsonSchemaResponseFormat(BaseModel):
    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[Union[TextFormat, JsonObjectFormat, JsonSchemaResponseFormat], Field(discriminator="type")]


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Optional[int] = Field(None, **_within("max_new_tokens"))
    logprobs: Optional[bool] = None
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: Optional[ResponseFormat] = None
    tools: Optional[list[Tool]] = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice = None
    parallel_tool_calls: Optional[bool] = None
    functions: _refused("functions", EMPTY_LIST_OR_NULL) = None
    function_call: Optional[Literal["none", "auto"]] = None
    audio: _refused("audio output") = None
    modalities: Optional[list[Literal["text"]]] = None
    prediction: _refused("predicted outputs") = None
    reasoning_effort: _refused("reasoning_effort") = None
    web_search_options: _refused("web search") = None

    def as_messages(self) -> list[dict[str, Any]]:
        """Messages for the engine (raises DataError for an image_url that is not a readable data URL)."""
        # `developer` is the newer name OpenAI gives the system role.
        return [{"role": "system" if m.role == "developer" else m.role, "content": m.text(), "images": m.images(),
                 "tool_calls": [c.canonical() for c in m.tool_calls or ()] if m.role == "assistant" else None}
                for m in self.messages]

    @field_validator("tool_choice")
    @classmethod
    def _names_a_tool(cls, value, info: ValidationInfo):
        check_choice(info.data.get("tools"), value)
        return value

    @property
    def token_limit(self) -> Optional[int]:
        return self.max_completion_tokens or self.max_tokens

    @property
    def top_logprobs_wanted(self) -> Optional[int]:
        """None: no logprobs; else how many alternatives per token (`top_logprobs` counts only with `logprobs`)."""
        return (self.top_logprobs or 0) if self.logprobs else None


Prompt = Union[
    NonEmptyText,
    Annotated[list[NonEmptyText], Field(min_length=1)],
    Annotated[list[TokenId], Field(min_length=1)],
    Annotated[list[Annotated[list[TokenId], Field(min_length=1)]], Field(min_length=1)],
]


class CompletionRequest(SamplingRequest):
    prompt: Prompt
    echo: bool = False
    logprobs: Optional[int] = Field(None, ge=0, le=5)
    suffix: _refused("suffix (fill-in-the-middle)") = None

    def prompts(self) -> list[Union[str, list[int]]]:
        p = self.prompt
        if isinstance(p, str):
            return [p]
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


def token_bytes(text: str) -> list[int]:
    return list(text.encode("utf-8", errors="replace"))


def chat_logprobs(entries: Optional[list[TokenLogprob]]) -> Optional[dict[str, Any]]:
    """OpenAI's chat `logprobs` object: one entry per answer token, with its `top_logprobs` alternatives."""
    if entries is None:
        return None
    return {"content": [{"token": e.text, "logprob": e.logprob, "bytes": token_bytes(e.text),
                         "top_logprobs": [{"token": t, "logprob": lp, "bytes": token_bytes(t)}
                                          for _, t, lp in e.top]} for e in entries], "refusal": None}


def text_logprobs(entries: Optional[list[TokenLogprob]], offset: int = 0) -> Optional[dict[str, Any]]:
    """The legacy completions `logprobs` object (tokens, token_logprobs, top_logprobs, text_offset)."""
    if entries is None:
        return None
    offsets, at = [], offset
    for e in entries:
        offsets.append(at)
        at += len(e.text)
    return {"tokens": [e.text for e in entries], "token_logprobs": [e.logprob for e in entries],
            "top_logprobs": [{t: lp for _, t, lp in e.top} for e in entries], "text_offset": offsets}


def chat_response(rid: str, model: str, completions: list[Completion], prompt_tokens: int) -> dict[str, Any]:
    choices = [{"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
                "logprobs": chat_logprobs(c.logprobs)} for i, c in enumerate(completions)]
    return envelope(rid, "chat.completion", model, choices, usage(completions, prompt_tokens))


def chat_chunk(rid: str, model: str, created: int, index: Optional[int] = None, delta: Optional[dict] = None,
               finish_reason: Optional[str] = None, usage_: Optional[dict] = None,
               logprobs: Optional[list[TokenLogprob]] = None) -> dict[str, Any]:
    """One SSE event; `index=None` makes the final usage-only chunk (no choices)."""
    choices = [] if index is None else [{"index": index, "delta": delta or {}, "finish_reason": finish_reason,
                                         "logprobs": chat_logprobs(logprobs)}]
    return envelope(rid, "chat.completion.chunk", model, choices, usage_, created)


def text_response(rid: str, model: str, completions: list[Completion], prompt_tokens: int,
                  echoed: Optional[list[str]] = None) -> dict[str, Any]:
    choices = []
    for i, c in enumerate(completions):
        head = echoed[i] if echoed else ""
        choices.append({"index": i, "text": head + c.text, "finish_reason": c.finish_reason,
                        "logprobs": text_logprobs(c.logprobs, len(head))})
    return envelope(rid, "text_completion", model, choices, usage(completions, prompt_tokens))


def text_chunk(rid: str, model: str, created: int, index: Optional[int] = None, text: str = "",
               finish_reason: Optional[str] = None, usage_: Optional[dict] = None,
               logprobs: Optional[list[TokenLogprob]] = None) -> dict[str, Any]:
    choices = [] if index is None else [{"index": index, "text": text, "finish_reason": finish_reason,
                                         "logprobs": text_logprobs(logprobs)}]
    return envelope(rid, "text_completion", model, choices, usage_, created)


def _image(url: str) -> bytes:
    from ember.data.images import check_image, decode_data_url
    from ember.errors import DataError

    if not url.startswith("data:"):
        raise DataError("request", "image_url", "image_url.url must be a data:image/<type>;base64 URL (the server "
                                                "fetches no URLs and reads no files)")
    data = decode_data_url(url)
    check_image(data, "request", "image_url")
    return data
