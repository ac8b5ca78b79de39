"""How `ember serve` answers what goes wrong: OpenAI's error body for every status, and nothing that drops a
keep-alive connection, leaks internal text or logs a traceback twice.

- `BodyLimit`: a body over the limit is a 413, answered without reading the rest.
- `CatchAll`: an unexpected exception becomes a plain 500, logged once, the connection kept (Starlette's own
  last-resort handler re-raises after answering, so the server logs the traceback again and closes the connection).
- `install_error_handlers`: validation errors → 400 naming the field; HTTP errors (404, 405 with `Allow`, a body
  FastAPI cannot parse) in the same body shape.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ember.serving import protocol as P

log = logging.getLogger(__name__)


TOO_LARGE = "ember.body_too_large"


class BodyLimit:
    """Answers 413 for a body over `max_bytes`: at once when Content-Length says so, else as soon as the bytes
    read pass the limit (the rest is never read, so a 50 MB body costs nothing)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await _too_large(self.max_bytes)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:  # the handler sees a client that went away; http_error answers 413
                    scope[TOO_LARGE] = self.max_bytes
                    return {"type": "http.disconnect"}
            return message

        await self.app(scope, limited, send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(P.error_body(f"The request body is larger than this server accepts (at most {limit:,} bytes; "
                                     "see --max-request-bytes).", param=None), status_code=413)


class CatchAll:
    """Turns an unexpected exception into OpenAI's 500 body, logged once, with the connection kept open."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracked(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception:
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            if not started:
                body = P.error_body("The server had an error while processing your request; the server log has "
                                    "the details.", type="server_error")
                await JSONResponse(body, status_code=500)(scope, receive, send)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(P.APIError)
    async def api_error(request: Request, exc: P.APIError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if any(e.get("type") == "json_invalid" for e in errors):
            return JSONResponse(P.error_body("We could not parse the JSON body of your request: "
                                             f"{errors[0].get('ctx', {}).get('error', 'invalid JSON')}. Send valid "
                                             "JSON with Content-Type: application/json."), status_code=400)
        first = errors[0] if errors else {}
        where = [str(x) for x in first.get("loc", ()) if x != "body"]
        param = _param(where) or None
        text = _message(first)
        message = f"Invalid value for '{param}': {text}" if param else f"Invalid request: {text}"
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
        return JSONResponse(P.error_body(message, param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        status = exc.status_code
        kind = "not_found_error" if status == 404 else "invalid_request_error"
        if TOO_LARGE in request.scope:
            return _too_large(request.scope[TOO_LARGE])
        if status == 400:
            message = "We could not parse the body of your request: send one JSON object (nested at most a few " \
                      "hundred levels deep) with Content-Type: application/json."
        else:
            message = f"{request.method} {request.url.path}: {exc.detail}"
        return JSONResponse(P.error_body(message, type=kind), status_code=status, headers=exc.headers)


def _param(where: list[str]) -> str:
    """`loc` without pydantic's union-branch labels (e.g. `list[TextPart]`, `function-after[...]`)."""
    return ".".join(w for w in where if not any(c in w for c in "[]()") and w not in ("str", "int", "float", "bool"))


def _message(error: dict) -> str:
    msg = error.get("msg", "invalid value")
    return msg.removeprefix("Value error, ")
