"""An OpenAI-compatible HTTP API over a chat model: /v1/chat/completions (streaming too), /v1/models, /health, /.

    request JSON --parse_request--> Conversation + SamplingParams --pool.checkout--> ChatSession (a fork of
    the cached session sharing the longest prefix) --stream--> text pieces --> JSON or server-sent events
    --pool.checkin--> the session, now holding the reply, cached for the client's next request

Every failure a client can cause is a 4xx with OpenAI's error JSON naming the problem; anything else
is a 500 with the exception's type only (the traceback goes to the server log, not the client).
"""

from __future__ import annotations

import hmac
import json
import logging
import threading
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmdialog.chat.session import ChatSession
from mmdialog.errors import MMDialogError
from mmdialog.serve.messages import APIError, Limits, parse_request
from mmdialog.serve.page import PAGE
from mmdialog.serve.pool import MediaCache, SessionPool

log = logging.getLogger("mmdialog.serve")
PUBLIC_PATHS = {"/health", "/"}  # the page holds no data; it asks for the key and sends it with each call


def create_app(model, processor, *, model_name: str = "mmdialog", api_key: str | None = None,
               allow_dir: str | Path | None = None, limits: Limits | None = None,
               cache_bytes: int = 512 * 2**20) -> FastAPI:
    limits = limits or Limits()
    allow = Path(allow_dir).resolve() if allow_dir else None
    if allow is not None and not allow.is_dir():
        raise MMDialogError(f"--allow-dir {allow_dir} is not a directory")
    model_lock = threading.Lock()  # one forward pass at a time; requests interleave token by token
    media_cache = MediaCache()
    pool = SessionPool(lambda: ChatSession(model, processor, media_cache=media_cache, lock=model_lock), cache_bytes)
    created = int(time.time())
    app = FastAPI(title="mmdialog", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pool = pool

    @app.exception_handler(APIError)
    async def api_error(request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, e: StarletteHTTPException):
        message = {404: f"no such endpoint: {request.method} {request.url.path}",
                   405: f"method {request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return JSONResponse(APIError(e.status_code, message, code="not_found" if e.status_code == 404 else None).body(),
                            status_code=e.status_code)

    @app.exception_handler(Exception)
    async def server_error(request, e: Exception):
        log.exception("internal error on %s", request.url.path)
        return JSONResponse(APIError(500, f"internal server error ({type(e).__name__}); see the server log",
                                     type="server_error").body(), status_code=500)

    @app.middleware("http")
    async def authenticate(request: Request, call_next):
        if api_key and request.url.path not in PUBLIC_PATHS:
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode()):
                what = "missing" if not given else "wrong"
                return JSONResponse(APIError(401, f"{what} API key: send the header 'Authorization: Bearer KEY'",
                                             code="invalid_api_key").body(), status_code=401)
        return await call_next(request)

    @app.get("/health")
    def health():
        return {"status": "ok", "model": model_name, **pool.stats()}

    @app.get("/", response_class=HTMLResponse)
    def page():
        return PAGE.replace("{{MODEL}}", model_name)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "mmdialog"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        body = await read_json(request, limits.max_body_bytes)
        req = await run_in_threadpool(parse_request, body, limits, allow)  # base64 and image decoding
        if req.model is not None and req.model != model_name:
            raise APIError(404, f"model {req.model!r} does not exist; this server serves {model_name!r}", "model",
                           "model_not_found")
        session, source, stream = await run_in_threadpool(start, pool, req)
        rid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not req.stream:
            text = await run_in_threadpool(finish, pool, session, source, stream)
            r = stream.reply
            return {"id": rid, "object": "chat.completion", "created": now, "model": model_name,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                 "finish_reason": r.finish_reason}],
                    "usage": usage(r)}
        return StreamingResponse(sse(pool, session, source, stream, req.include_usage, rid, now, model_name),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


async def read_json(request: Request, max_bytes: int):
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise APIError(413, f"the request body is {int(declared)} bytes, over the limit of {max_bytes}",
                       code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise APIError(413, f"the request body is over the limit of {max_bytes} bytes", code="request_too_large")
        chunks.append(chunk)
    try:
        return json.loads(b"".join(chunks))
    except ValueError as e:
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None


def start(pool: SessionPool, req):
    """Take a session for the request and prefill it; errors here (context too long) become 400s."""
    session, source = pool.checkout(req.conversation)
    try:
        stream = session.generate_stream(commit=True, sampling=req.sampling)
    except MMDialogError as e:
        raise APIError(400, str(e), "messages", "context_length_exceeded" if "max_seq_len" in str(e) else None) from None
    return session, source, stream


def finish(pool, session, source, stream) -> str:
    text = stream.text()
    pool.checkin(session, source)
    return text


def usage(r) -> dict:
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": r.cached_tokens}}


def sse(pool, session, source, stream, include_usage, rid, created, model_name):
    """OpenAI's chunk format: a role chunk, content chunks, a finish chunk, [usage chunk], then [DONE].
    A sync generator: Starlette runs it in a worker thread, so decoding never blocks the event loop."""

    def event(delta, finish_reason=None, **extra):
        chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
        return f"data: {json.dumps(chunk)}\n\n"

    try:
        yield event({"role": "assistant", "content": ""})
        for piece in stream:
            yield event({"content": piece})
        pool.checkin(session, source)
        yield event({}, stream.reply.finish_reason)
        if include_usage:
            chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                     "choices": [], "usage": usage(stream.reply)}
            yield f"data: {json.dumps(chunk)}\n\n"
    except Exception as e:  # headers are sent: report in the stream, as OpenAI does
        log.exception("error while streaming %s", rid)
        yield f"data: {json.dumps(APIError(500, f'generation failed ({type(e).__name__})', type='server_error').body())}\n\n"
    finally:
        stream.close()  # a client that went away abandons the turn (the session is not kept)
    yield "data: [DONE]\n\n"


def serve(checkpoint: str, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
          allow_dir: str | None = None, model_name: str | None = None, max_new_tokens: int = 64,
          cache_mb: int = 512, max_body_mb: float = 16, max_images: int = 8) -> None:
    import uvicorn

    from mmdialog.export import load_any

    ck = load_any(checkpoint)  # a training checkpoint or an export
    name = model_name or "mmdialog"
    limits = Limits(max_body_bytes=int(max_body_mb * 2**20), max_images=max_images, max_new_tokens=max_new_tokens)
    app = create_app(ck.model, ck.processor, model_name=name, api_key=api_key, allow_dir=allow_dir, limits=limits,
                     cache_bytes=cache_mb * 2**20)
    auth = "an API key" if api_key else "no API key"
    print(f"serving {name} on http://{host}:{port}/ ({auth}; chat page at /, API at /v1/chat/completions)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
