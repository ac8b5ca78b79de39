"""`ember serve`: an OpenAI-compatible HTTP API over one Engine.

Routes: POST /v1/chat/completions, POST /v1/completions (raw prompt text), GET /v1/models, GET /health, and the
OpenAPI document at GET /openapi.json (behind the API key; there is no Swagger page, which would load its
scripts from a CDN). Prompts are rendered and tokenized on a worker thread, never on the event loop; generation
runs on the continuous-batching scheduler's thread; handlers wait on both without blocking the event loop, so a
big request never stalls /health or another client's stream. A streaming client that goes away cancels its rows
at the next token; so does a waiting non-stream client.

Every error is OpenAI's JSON body: 400 for anything invalid (`param` names the field), 401, 404, 405 (with
`Allow`), 413 for a body over `max_request_bytes`, and a 500 that says nothing internal (the traceback is logged
once). None of them closes a keep-alive connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, AsyncIterator, Callable, Optional

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.middleware import Middleware

from ember.errors import EmberError
from ember.inference.completion import Completion, GenerationOptions, PromptImages
from ember.inference.constraints import GrammarCompiler
from ember.inference.engine import Engine
from ember.serving import openapi as O
from ember.serving import protocol as P
from ember.serving.batching import BatchScheduler, Job
from ember.serving.errors import BodyLimit, CatchAll, install_error_handlers
from ember.serving.tools import ChoiceCalls, ToolMode, call_grammar, tool_mode, with_tool_calls

log = logging.getLogger(__name__)
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
MAX_REQUEST_BYTES = 1 << 20


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

    def on_logprobs(self, index: int, entries) -> None:
        self._put(("logprobs", index, entries))

    def on_done(self, result: object) -> None:
        self._put(("done", result, None))


class Server:
    def __init__(self, engine: Engine, model_name: str, defaults: Optional[GenerationOptions] = None,
                 max_batch: int = 8, prefill_chunk: int = 512):
        self.engine = engine
        self.model_name = model_name
        self.defaults = replace(defaults or GenerationOptions(), num_beams=1, stop=[], seed=None)
        self.context_length = context_length(engine)
        self.max_batch = max(1, max_batch)
        self.scheduler = BatchScheduler(engine, max_rows=self.max_batch, prefill_chunk=prefill_chunk)
        self.grammars = GrammarCompiler(engine.tokenizer, engine.stop_ids)
        self.vocab = len(engine.tokenizer)
        self.tokenizing = threading.Lock()  # one prompt at a time through the tokenizer (its Rust side is shared)
        self.created = int(time.time())

    # -- request → job -----------------------------------------------------------------------------------------
    def check_model(self, name: str) -> None:
        if name != self.model_name:
            raise P.APIError(404, f"The model '{name}' does not exist; this server serves '{self.model_name}'",
                             param="model", code="model_not_found")

    def check_rows(self, rows: int, param: str) -> None:
        if rows > self.max_batch:
            raise P.APIError(400, f"This request asks for {rows} sequences (n × prompts); one request may ask for at "
                             f"most {self.max_batch} (the server's --max-batch). Send fewer choices or prompts per "
                             "request.", param=param, code="too_many_sequences")

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

    def options(self, req: P.SamplingRequest, max_new_tokens: int, top_logprobs: Optional[int]) -> GenerationOptions:
        """temperature unset → the server's defaults; 0 → greedy; > 0 → sampling at that temperature."""
        bias = req.logit_bias or {}
        outside = sorted(t for t in bias if t >= self.vocab)
        if outside:
            raise P.APIError(400, f"logit_bias names token ids outside the vocabulary (0..{self.vocab - 1}): "
                             f"{outside[:5]}", param="logit_bias")
        o = replace(self.defaults, max_new_tokens=max_new_tokens, stop=req.stops, seed=req.seed,
                    presence_penalty=req.presence_penalty or 0.0, frequency_penalty=req.frequency_penalty or 0.0,
                    logit_bias=dict(bias), top_logprobs=top_logprobs)
        if req.temperature is not None:
            o = replace(o, do_sample=req.temperature > 0, temperature=req.temperature or 1.0)
        if req.top_p is not None:
            o = replace(o, top_p=req.top_p)
        return o

    def tool_mode(self, req: P.ChatCompletionRequest) -> ToolMode:
        """What the request's tools change (ember.serving.tools); 400 when the model cannot serve them."""
        try:
            return tool_mode(req.tools, req.tool_choice, req.parallel_tool_calls, self.engine.renderer.tool_call_format)
        except ValueError as exc:
            raise P.APIError(400, str(exc), param="tools") from None

    def chat_prompt(self, req: P.ChatCompletionRequest, tools: Optional[list[dict]] = None
                    ) -> tuple[list[int], Optional[PromptImages]]:
        """Runs on a worker thread: rendering and tokenizing a long history takes a while (and images decode).
        Returns the prompt ids and, for messages with images, the pixel inputs of their prefill."""
        try:
            with self.tokenizing:
                return self.engine.prompt(req.as_messages(), tools)
        except EmberError as exc:  # the chat template refused these messages (roles out of order, a bad image)
            raise P.APIError(400, str(exc), param="messages") from None

    def text_prompts(self, req: P.CompletionRequest) -> tuple[list[list[int]], list[str]]:
        """Token ids and the text to echo for each prompt (worker thread)."""
        ids, texts = [], []
        with self.tokenizing:
            for index, prompt in enumerate(req.prompts()):
                if isinstance(prompt, str):
                    tokens, text = self.engine.tokenizer(prompt)["input_ids"], prompt
                else:
                    tokens = list(prompt)
                    if any(t >= self.vocab for t in tokens):
                        raise P.APIError(400, f"prompt[{index}] holds token ids outside 0..{self.vocab - 1}",
                                         param="prompt")
                    text = self.engine.tokenizer.decode(tokens) if req.echo else ""
                if not tokens:
                    raise P.APIError(400, f"prompt[{index}] encodes to no tokens", param="prompt")
                ids.append(tokens)
                texts.append(text)
        return ids, texts

    def constraint(self, req: P.SamplingRequest, tools: Optional[ToolMode] = None) -> Optional[Callable]:
        """The per-row constraint `response_format` (JSON) or a forced tool call asks for (compiled on a worker
        thread)."""
        fmt = getattr(req, "response_format", None)
        if tools is not None and tools.forced:
            if fmt is not None and fmt.type != "text":
                raise P.APIError(400, "tool_choice forces a tool call and response_format asks for a JSON answer: "
                                 "send one of them", param="tool_choice")
            try:
                return self.grammars.lark(call_grammar(tools)).constraint
            except EmberError as exc:
                raise P.APIError(400, f"the tools' parameters cannot constrain a call: {exc}", param="tools") from None
        if fmt is None or fmt.type == "text":
            return None
        schema = fmt.json_schema.schema_ if fmt.type == "json_schema" else None
        try:
            return self.grammars.json(schema).constraint
        except EmberError as exc:
            raise P.APIError(400, str(exc), param="response_format") from None

    # -- running ----------------------------------------------------------------------------------------------
    def submit(self, prompts: list[list[int]], options: GenerationOptions, stream: bool,
               limits: Optional[list[int]] = None, constraint: Optional[Callable] = None,
               images: Optional[PromptImages] = None) -> tuple[Job, _Bridge]:
        bridge = _Bridge(asyncio.get_running_loop())
        job = Job(prompts, options, on_done=bridge.on_done, on_text=bridge.on_text if stream else None,
                  limits=limits, on_logprobs=bridge.on_logprobs if stream else None, constraint=constraint,
                  images=images)
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
                    if isinstance(value, BaseException):
                        raise P.APIError(500, "Generation failed; the server log has the details.",
                                         type="server_error")
                    return value
        finally:
            job.cancel.set()  # a no-op once done; stops the rows if this handler is cancelled

    async def events(self, job: Job, bridge: _Bridge, chunk, first: list[dict], usage_prompt: Optional[int],
                     calls: Optional[list[ChoiceCalls]] = None) -> AsyncIterator[str]:
        """SSE lines for a streaming job; `chunk(index=..., **fields)` builds one event's payload; `first[i]` is
        what choice i's first chunk carries (chat: the role; completions with echo: the prompt text); `calls[i]`
        reads choice i's answer for tool calls (text from a `<tool_call>` on is held until the answer ends)."""
        pending: dict[int, list] = {}
        try:
            for index, fields in enumerate(first):
                if fields:
                    yield _sse(chunk(index=index, **fields))
            while True:
                kind, a, b = await bridge.queue.get()
                if kind == "logprobs":
                    pending.setdefault(a, []).extend(b)
                    continue
                if kind == "text":
                    if calls is not None and not (b := calls[a].feed(b)):
                        continue  # held; its logprobs go with the next chunk sent
                    yield _sse(chunk(index=a, logprobs=pending.pop(a, None), **_delta(chunk, b)))
                    continue
                if isinstance(a, BaseException):
                    yield _sse(P.error_body("Generation failed; the server log has the details.", type="server_error"))
                    break
                for index, c in enumerate(a):
                    reason = c.finish_reason
                    if calls is not None:
                        rest, deltas, reason = calls[index].finish(reason)
                        if rest:
                            yield _sse(chunk(index=index, logprobs=pending.pop(index, None), **_delta(chunk, rest)))
                        for delta in deltas:
                            yield _sse(chunk(index=index, delta=delta))
                    yield _sse(chunk(index=index, finish_reason=reason, logprobs=pending.pop(index, None),
                                     **_delta(chunk, None)))
                if usage_prompt is not None:
                    yield _sse(chunk(usage_=P.usage(a, usage_prompt)))
                break
            yield "data: [DONE]\n\n"
        finally:
            job.cancel.set()  # the client went away mid-stream (or we are done): stop generating


def _delta(chunk, text: Optional[str]) -> dict[str, Any]:
    if chunk.chat:  # chat: {"delta": {"content": ...}}
        return {"delta": {} if text is None else {"content": text}}
    return {"text": text or ""}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def create_app(engine: Engine, model_name: str, api_key: Optional[str] = None,
               defaults: Optional[GenerationOptions] = None, max_batch: int = 8, prefill_chunk: int = 512,
               max_request_bytes: int = MAX_REQUEST_BYTES) -> FastAPI:
    """The API app. `api_key` (if set) is required as `Authorization: Bearer KEY` on every route but /health."""
    server = Server(engine, model_name, defaults, max_batch, prefill_chunk)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        server.scheduler.close()

    app = FastAPI(title="Ember", version="1", description=f"OpenAI-compatible API serving {model_name}",
                  lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None,
                  middleware=[Middleware(BodyLimit, max_bytes=max_request_bytes), Middleware(CatchAll)])
    app.state.server = server
    install_error_handlers(app)

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

    @app.get("/health", response_model=None, responses={200: {"model": O.Health}})
    async def health() -> dict[str, Any]:
        return {"status": "ok", "model": model_name, **server.scheduler.totals, **server.scheduler.load}

    @app.get("/openapi.json", include_in_schema=False, dependencies=[Depends(authorize)])
    async def openapi() -> JSONResponse:
        return JSONResponse(O.document(app, images=getattr(engine.renderer, "images", None) is not None,
                                       vocab_size=server.vocab))

    @v1.get("/models", response_model=None, responses={200: {"model": O.ModelList}, 401: O.ERRORS[401]})
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [_model_card(server)]}

    @v1.get("/models/{name:path}", response_model=None,
            responses={200: {"model": O.ModelCard}, 401: O.ERRORS[401], 404: O.MODEL_ERRORS[404]})
    async def model(name: str) -> dict[str, Any]:
        server.check_model(name)
        return _model_card(server)

    @v1.post("/chat/completions", response_model=None, responses=O.generation_responses(O.ChatCompletion))
    async def chat_completions(req: P.ChatCompletionRequest, request: Request):
        server.check_model(req.model)
        server.check_rows(req.n, "n")
        tools = server.tool_mode(req)
        prompt, images = await run_in_threadpool(server.chat_prompt, req, tools.tools)
        options = server.options(req, server.limit(len(prompt), req.token_limit, "messages"), req.top_logprobs_wanted)
        constraint = await run_in_threadpool(server.constraint, req, tools)
        job, bridge = server.submit([prompt] * req.n, options, req.stream, constraint=constraint, images=images)
        rid = P.new_id("chatcmpl")
        if req.stream:
            created = int(time.time())
            chunk = _chunker(lambda **kw: P.chat_chunk(rid, model_name, created, **kw), chat=True)
            first = [{"delta": {"role": "assistant", "content": ""}}] * req.n
            usage_prompt = len(prompt) if req.include_usage else None
            calls = [ChoiceCalls() for _ in range(req.n)] if tools.parse else None
            return StreamingResponse(server.events(job, bridge, chunk, first, usage_prompt, calls),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        completions = await server.result(job, bridge, request)
        body = P.chat_response(rid, model_name, completions, len(prompt))
        return with_tool_calls(body, [c.text for c in completions]) if tools.parse else body

    @v1.post("/completions", response_model=None, responses=O.generation_responses(O.TextCompletion))
    async def completions(req: P.CompletionRequest, request: Request):
        server.check_model(req.model)
        server.check_rows(req.n * len(req.prompts()), "n" if req.n > 1 else "prompt")
        prompts, texts = await run_in_threadpool(server.text_prompts, req)
        limits = [server.limit(len(p), req.max_tokens, "prompt") for p in prompts]
        options = server.options(req, max(limits), req.logprobs)
        rows = [p for p in prompts for _ in range(req.n)]
        echoed = [t for t in texts for _ in range(req.n)] if req.echo else None
        job, bridge = server.submit(rows, options, req.stream, [n for n in limits for _ in range(req.n)])
        rid = P.new_id("cmpl")
        prompt_tokens = sum(len(p) for p in prompts)
        if req.stream:
            created = int(time.time())
            chunk = _chunker(lambda **kw: P.text_chunk(rid, model_name, created, **kw), chat=False)
            first = [{"text": t} if t else {} for t in echoed] if echoed else [{}] * len(rows)
            usage_prompt = prompt_tokens if req.include_usage else None
            return StreamingResponse(server.events(job, bridge, chunk, first, usage_prompt),
                                     media_type="text/event-stream", headers=SSE_HEADERS)
        done = await server.result(job, bridge, request)
        return P.text_response(rid, model_name, done, prompt_tokens, echoed)

    app.include_router(v1)
    return app


class _chunker:
    """Builds one SSE payload; `chat` says which delta shape the endpoint streams."""

    def __init__(self, build: Callable[..., dict], chat: bool):
        self.build, self.chat = build, chat

    def __call__(self, **fields) -> dict:
        return self.build(**fields)


def _model_card(server: Server) -> dict[str, Any]:
    return {"id": server.model_name, "object": "model", "created": server.created, "owned_by": "ember",
            "context_length": server.context_length}
