"""`ember serve`: an OpenAI-compatible HTTP API over one Engine.

Routes: POST /v1/chat/completions, POST /v1/completions (raw prompt text), GET /v1/models, GET /health.
Generation runs on the batching queue's worker thread; handlers wait on it without blocking the event loop.
A streaming client that goes away cancels its rows at the next token; so does a waiting non-stream client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, AsyncIterator, Optional

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ember.errors import EmberError
from ember.inference.engine import Completion, Engine, GenerationOptions
from ember.serving import protocol as P
from ember.serving.batching import BatchScheduler, Job

log = logging.getLogger(__name__)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def context_length(engine: Engine) -> int:
    config = getattr(engine.model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return int(min(getattr(engine.tokenizer, "model_max_length", 4096), 1 << 20))


class _Bridge:
    """Carries a job's pieces and its result from the worker thread into the request's event loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.loop = loop
        self.queue: asyncio.Queue = asyncio.Queue()

    def _put(self, item) -> None:
        try:
            self.loop.call_soon_threadsafe(self.queue.put_nowait, item)
        except RuntimeError:  # the loop is gone (server shutting down): nobody is waiting any more
            pass

    def on_text(self, index: int, piece: str) -> None:
        self._put(("text", index, piece))

    def on_done(self, result: object) -> None:
        self._put(("done", result, None))


class Server:
    def __init__(self, engine: Engine, model_name: str, defaults: Optional[GenerationOptions] = None,
                 max_batch: int = 8, batch_window_s: float = 0.01):
        self.engine = engine
        self.model_name = model_name
        self.defaults = replace(defaults or GenerationOptions(), num_beams=1, stop=[], seed=None)
        self.context_length = context_length(engine)
        self.scheduler = BatchScheduler(engine, max_rows=max_batch, window_s=batch_window_s)
        self.created = int(time.time())

    # -- request → job -----------------------------------------------------------------------------------------
    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise P.APIError(404, f"The model '{name}' does not exist; this server serves '{self.model_name}'",
                             param="model", code="model_not_found")

    def limit(self, prompt_tokens: int, requested: Optional[int], what: str) -> int:
        ctx = self.context_length
        if requested is None:
            if prompt_tokens >= ctx:
                raise P.APIError(400, f"This model's maximum context length is {ctx} tokens. However, your {what} "
                                 f"resulted in {prompt_tokens} tokens. Please reduce the length of the {what}.",
                                 param=what, code="context_length_exceeded")
            return min(self.defaults.max_new_tokens, ctx - prompt_tokens)
        if prompt_tokens + requested > ctx:
            raise P.APIError(400, f"This model's maximum context length is {ctx} tokens. However, you requested "
                             f"{prompt_tokens + requested} tokens ({prompt_tokens} in the {what}, {requested} in the "
                             f"completion). Please reduce the length of the {what} or completion.",
                             param=what, code="context_length_exceeded")
        return requested

    def options(self, req: P.SamplingRequest, max_new_tokens: int) -> GenerationOptions:
        """temperature unset → the server's defaults; 0 → greedy; > 0 → sampling at that temperature."""
        o = replace(self.defaults, max_new_tokens=max_new_tokens, stop=list(req.stop), seed=req.seed)
        if req.temperature is not None:
            o = replace(o, do_sample=req.temperature > 0, temperature=req.temperature or 1.0)
        if req.top_p is not None:
            o = replace(o, top_p=req.top_p)
        return o

    def chat_prompt(self, req: P.ChatCompletionRequest) -> list[int]:
        try:
            return self.engine.prompt_ids(req.as_messages())
        except EmberError as exc:  # the chat template refused these messages (e.g. roles out of order)
            raise P.APIError(400, str(exc), param="messages") from None

    def text_prompt(self, prompt, index: int) -> list[int]:
        ids = list(prompt) if isinstance(prompt, list) else self.engine.tokenizer(prompt)["input_ids"]
        if not ids:
            raise P.APIError(400, f"prompt[{index}] is empty", param="prompt")
        vocab = len(self.engine.tokenizer)
        if any(not 0 <= t < vocab for t in ids):
            raise P.APIError(400, f"prompt[{index}] holds token ids outside 0..{vocab - 1}", param="prompt")
        return ids

    # -- running ----------------------------------------------------------------------------------------------
    def submit(self, prompts: list[list[int]], options: GenerationOptions, stream: bool,
               limits: Optional[list[int]] = None) -> tuple[Job, _Bridge]:
        bridge = _Bridge(asyncio.get_running_loop())
        job = Job(prompts, options, on_done=bridge.on_done, on_text=bridge.on_text if stream else None, limits=limits)
        self.scheduler.submit(job)
        return job, bridge

    async def result(self, job: Job, bridge: _Bridge, request: Request) -> list[Completion]:
        """Wait for a non-stream job; cancel it if the client disconnects meanwhile."""
        try:
            while True:
                try:
                    kind, value, _ = await asyncio.wait_for(bridge.queue.get(), timeout=0.5)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        job.cancel.set()
                    continue
                if kind == "done":
                    return _raise_failure(value)
        finally:
            job.cancel.set()  # a no-op once done; stops the rows if this handler is cancelled

    async def events(self, job: Job, bridge: _Bridge, chunk, first: Optional[dict], usage_prompt: Optional[int]
                     ) -> AsyncIterator[str]:
        """SSE lines for a streaming job; `chunk(index=..., **fields)` builds one event's payload."""
        try:
            if first is not None:
                for index in range(len(job.prompts)):
                    yield _sse(chunk(index=index, **first))
            while True:
                kind, a, b = await bridge.queue.get()
                if kind == "text":
                    yield _sse(chunk(index=a, **_delta(first, b)))
                    continue
                if isinstance(a, BaseException):
                    yield _sse(_failure_body(a))
                    break
                for index, c in enumerate(a):
                    yield _sse(chunk(index=index, finish_reason=c.finish_reason, **_delta(first, None)))
                if usage_prompt is not None:
                    yield _sse(chunk(usage_=P.usage(a, usage_prompt)))
                break
            yield "data: [DONE]\n\n"
        finally:
            job.cancel.set()  # the client went away mid-stream (or we are done): stop generating


def _delta(first: Optional[dict], text: Optional[str]) -> dict[str, Any]:
    if first is not None:  # chat: {"delta": {"content": ...}}
        return {"delta": {} if text is None else {"content": text}}
    return {"text": text or ""}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _raise_failure(value):
    if isinstance(value, BaseException):
        raise P.APIError(500, f"generation failed: {value}", type="server_error") from value
    return value


def _failure_body(exc: BaseException) -> dict:
    return P.error_body(f"generation failed: {exc}", type="server_error")


def create_app(engine: Engine, model_name: str, api_key: Optional[str] = None,
               defaults: Optional[GenerationOptions] = None, max_batch: int = 8,
               batch_window_s: float = 0.01) -> FastAPI:
    """The API app. `api_key` (if set) is required as `Authorization: Bearer KEY` on every route but /health."""
    server = Server(engine, model_name, defaults, max_batch, batch_window_s)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        server.scheduler.close()

    app = FastAPI(title="Ember", description=f"OpenAI-compatible API serving {model_name}", lifespan=lifespan)
    app.state.server = server
    _install_error_handlers(app)

    async def authorize(request: Request) -> None:
        if not api_key:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if not header:
            raise P.APIError(401, "You didn't provide an API key: send 'Authorization: Bearer KEY'",
                             code="missing_api_key")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip(), api_key):
            raise P.APIError(401, "Incorrect API key provided", code="invalid_api_key")

    v1 = APIRouter(prefix="/v1", dependencies=[Depends(authorize)])

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, **server.scheduler.totals}

    @v1.get("/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(server)]}

    @v1.get("/models/{name:path}")
    async def model(name: str) -> dict[str, Any]:
        server.check_model(name)
        return _model_card(server)

    @v1.post("/chat/completions")
    async def chat_completions(req: P.ChatCompletionRequest, request: Request):
        req.refuse_unsupported()
        server.check_model(req.model)
        prompt = server.chat_prompt(req)
        options = server.options(req, server.limit(len(prompt), req.token_limit, "messages"))
        job, bridge = server.submit([prompt] * req.n, options, req.stream)
        rid = P.new_id("chatcmpl")
        if req.stream:
            created = int(time.time())
            chunk = lambda **kw: P.chat_chunk(rid, model_name, created, **kw)  # noqa: E731
            first = {"delta": {"role": "assistant", "content": ""}}
            usage_prompt = len(prompt) if req.include_usage else None
            return StreamingResponse(server.events(job, bridge, chunk, first, usage_prompt),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        completions = await server.result(job, bridge, request)
        return P.chat_response(rid, model_name, completions, len(prompt))

    @v1.post("/completions")
    async def completions(req: P.CompletionRequest, request: Request):
        req.refuse_unsupported()
        server.check_model(req.model)
        prompts = [server.text_prompt(p, i) for i, p in enumerate(req.prompts())]
        limits = [server.limit(len(p), req.max_tokens, "prompt") for p in prompts]
        options = server.options(req, max(limits))
        rows = [p for p in prompts for _ in range(req.n)]
        job, bridge = server.submit(rows, options, req.stream, [n for n in limits for _ in range(req.n)])
        rid = P.new_id("cmpl")
        prompt_tokens = sum(len(p) for p in prompts)
        if req.stream:
            created = int(time.time())
            chunk = lambda **kw: P.text_chunk(rid, model_name, created, **kw)  # noqa: E731
            usage_prompt = prompt_tokens if req.include_usage else None
            return StreamingResponse(server.events(job, bridge, chunk, None, usage_prompt),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        done = await server.result(job, bridge, request)
        return P.text_response(rid, model_name, done, prompt_tokens)

    app.include_router(v1)
    return app


def _model_card(server: Server) -> dict[str, Any]:
    return {"id": server.model_name, "object": "model", "created": server.created, "owned_by": "ember",
            "context_length": server.context_length}


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(P.APIError)
    async def api_error(request: Request, exc: P.APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(P.error_body("We could not parse the JSON body of your request: "
                                             f"{errors[0].get('msg', 'invalid JSON')}. Send valid JSON "
                                             "with Content-Type: application/json."), status_code=400)
        first = errors[0] if errors else {}
        where = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = ".".join(where) or None
        message = f"Invalid value for '{param}': {first.get('msg', 'invalid request')}" if param else \
            f"Invalid request: {first.get('msg', 'invalid request')}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return JSONResponse(P.error_body(message, param=param), status_code=400)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(P.error_body(f"internal error: {type(exc).__name__}: {exc}", type="server_error"),
                            status_code=500)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        return JSONResponse(P.error_body(f"{request.method} {request.url.path}: {exc.detail}", type=kind),
                            status_code=exc.status_code)
