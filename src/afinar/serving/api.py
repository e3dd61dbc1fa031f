"""`afinar serve`: one FastAPI app with the OpenAI chat completions API and the web studio.

Routes
  GET  /health                 liveness and what is loaded (never needs the key)
  GET  /v1/models              each loaded adapter as a model id
  POST /v1/chat/completions    plain or streamed (server-sent events ending in `data: [DONE]`)
  GET  /                       the web page (chat and studio, see `studio.py` and resources/web)
The app serves the same `Engine` as `afinar chat`: the guard decides first, and a refusal is a
normal completion with `"afinar": {"refused": true, ...}`.

Limits: request bodies over `max_request_bytes` get 413; at most `max_queue` requests wait for
the model at once, the next one gets 429 (the engine generates one reply at a time); a client
that disconnects mid-stream stops its generation at the next token and frees its place.
With an API key (`--api-key` or AFINAR_API_KEY) every route but /health needs
`Authorization: Bearer KEY` (or the cookie that the page's key form sets).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
from contextlib import contextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from afinar.serving.protocol import KEY_COOKIE, ApiError, ChatRequest, chunk, completion, completion_id, guard_info, parse_chat_request

OPEN_PATHS = ("/health", "/login")


@dataclass
class ServeLimits:
    max_queue: int = 16  # requests waiting for or using the model; the next gets 429
    max_request_bytes: int = 1_000_000


def create_app(engine, api_key: str | None = None, limits: ServeLimits | None = None, studio=None):
    """The FastAPI app around a loaded `Engine` (and, optionally, a `Studio` for the web page)."""
    limits = limits or ServeLimits()
    app = FastAPI(title="afinar", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.engine, app.state.limits, app.state.queue = engine, limits, _Queue(limits.max_queue)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return JSONResponse(exc.body(), status_code=exc.status)

    @app.middleware("http")
    async def _guard_requests(request: Request, call_next):
        try:
            _check_size(request, limits)
            if api_key and request.url.path not in OPEN_PATHS:
                _check_key(request, api_key)
        except ApiError as exc:
            if exc.status == 401 and request.method == "GET" and request.url.path == "/":
                from afinar.serving.web import login_page

                return login_page()
            return JSONResponse(exc.body(), status_code=exc.status)
        return await call_next(request)

    @app.exception_handler(404)
    async def _not_found(request: Request, exc):
        return JSONResponse(ApiError(404, f"no route {request.method} {request.url.path}", code="not_found").body(), status_code=404)

    @app.exception_handler(405)
    async def _bad_method(request: Request, exc):
        return JSONResponse(ApiError(405, f"{request.method} is not allowed on {request.url.path}", code="method_not_allowed").body(), status_code=405)

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": engine.names, "waiting": app.state.queue.used}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "afinar",
                                            "guard_mode": engine.persona(name).recipe.guard.mode,
                                            "incomplete": engine.persona(name).incomplete} for name in engine.names]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        req = parse_chat_request(await request.body())
        model = _model(engine, req)
        routed = await asyncio.to_thread(engine.route, req.messages, model)  # the guard, once per request
        _check_context(engine, req, model, routed)
        if req.stream:
            return _stream_response(app, engine, req, model, routed)
        with app.state.queue.slot():
            reply = await asyncio.to_thread(engine.reply, req.messages, model, req.max_tokens,
                                            temperature=req.temperature, top_p=req.top_p, routed=routed)
        return completion(completion_id(), model, reply, req.ignored)

    from afinar.serving.web import add_web_routes

    add_web_routes(app, engine, studio)
    return app


class _Queue:
    """Counts the requests waiting for or using the model; refuses one past the limit."""

    def __init__(self, limit: int):
        self.limit, self.used, self._lock = limit, 0, threading.Lock()

    def acquire(self) -> None:
        with self._lock:
            if self.used >= self.limit:
                raise ApiError(429, f"the server is busy: {self.used} requests are already waiting for the model; retry shortly",
                               code="queue_full", kind="rate_limit_error")
            self.used += 1

    def release(self) -> None:
        with self._lock:
            self.used -= 1

    @contextmanager
    def slot(self):
        self.acquire()
        try:
            yield
        finally:
            self.release()


def _check_size(request, limits: ServeLimits) -> None:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limits.max_request_bytes:
        raise ApiError(413, f"the request body is larger than {limits.max_request_bytes} bytes", code="request_too_large")


def _check_key(request, api_key: str) -> None:
    header = request.headers.get("authorization", "")
    given = header[7:].strip() if header.lower().startswith("bearer ") else request.cookies.get(KEY_COOKIE, "")
    if not given or not hmac.compare_digest(given.encode(), api_key.encode()):
        raise ApiError(401, "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                       code="invalid_api_key", kind="authentication_error")


def _model(engine, req: ChatRequest) -> str:
    if req.model is None or req.model == "default":
        return engine.current
    if req.model not in engine.names:
        raise ApiError(404, f"the model {req.model!r} does not exist; loaded: {', '.join(engine.names)}", "model", "model_not_found")
    return req.model


def _check_context(engine, req: ChatRequest, model: str, routed) -> None:
    budget = engine.context_length
    wanted = req.max_tokens or engine.persona(model).recipe.generation.max_new_tokens
    used = engine.prompt_tokens(req.messages, model, routed)
    if used + wanted > budget:
        raise ApiError(400, f"the conversation takes {used} tokens and the reply may take {wanted}, more than the "
                            f"model's context of {budget} tokens; shorten the conversation or lower max_tokens",
                       "messages", "context_length_exceeded")


def _stream_response(app, engine, req: ChatRequest, model: str, routed):
    """Server-sent events: a role chunk, content chunks, a final chunk with the guard's verdict, [DONE]."""
    queue = app.state.queue
    queue.acquire()  # 429 now, before the stream starts, when the queue is full
    cid, cancel, done = completion_id(), threading.Event(), object()

    async def events():
        loop = asyncio.get_running_loop()
        items: asyncio.Queue = asyncio.Queue()

        def work():
            try:
                for item in engine.stream(req.messages, model, req.max_tokens, cancel=cancel,
                                          temperature=req.temperature, top_p=req.top_p, routed=routed):
                    loop.call_soon_threadsafe(items.put_nowait, item)
            except Exception as exc:  # reaches the client as an error event
                loop.call_soon_threadsafe(items.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(items.put_nowait, done)

        threading.Thread(target=work, daemon=True).start()
        yield chunk(cid, model, {"role": "assistant", "content": ""})
        while (item := await items.get()) is not done:
            if isinstance(item, Exception):
                error = ApiError(500, f"generation failed: {item}", code="generation_failed", kind="server_error")
                yield f"data: {json.dumps(error.body())}\n\n"
            elif isinstance(item, str):
                yield chunk(cid, model, {"content": item})
            else:
                yield chunk(cid, model, {}, "length" if item.truncated else "stop", {"afinar": guard_info(item, req.ignored)})
        yield "data: [DONE]\n\n"

    def close():
        cancel.set()  # the stream ended or the client went away: stop generating at the next token
        queue.release()

    return _EventStream(events(), close)


class _EventStream(StreamingResponse):
    """A streamed response that runs `on_close` once however it ends (done, error, disconnect)."""

    def __init__(self, content, on_close):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._on_close = on_close

    async def __call__(self, scope, receive, send):
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._on_close()
