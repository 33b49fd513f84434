"""An OpenAI-compatible HTTP API over a chat model: /v1/chat/completions (streaming too), /v1/models, /health, /.

    request --admission (429 when the queue is full)--> body --parse_request--> Conversation + SamplingParams
    --pool.checkout--> ChatSession (a fork of the tenant's cached session sharing the longest prefix)
    --stream--> text pieces --> JSON or server-sent events --pool.checkin--> the session, now holding the
    reply, cached for the same tenant's next request

Every failure a client can cause is a 4xx with OpenAI's error JSON naming the problem; anything else
is a 500 with the exception's type only (the traceback goes to the server log, not the client).

The event loop only reads requests and writes responses: parsing, image decoding, tokenising and
the model run in at most `Capacity.workers` threads; requests beyond them wait in a queue of
`Capacity.queue` places, and beyond that are refused with 429 and Retry-After. A request not done
within `Capacity.timeout_s` gets 504. /health never waits for any of it.

Without an API key anyone who can reach the port can use the server, so it also refuses what a web
page in the user's browser could send it: a body that is not application/json (a cross-site form
or a "simple" fetch) and a Host header naming another site (DNS rebinding).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import os
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mmdialog.chat.session import ChatSession
from mmdialog.errors import MMDialogError
from mmdialog.serve.messages import APIError, Limits, parse_request
from mmdialog.serve.page import PAGE
from mmdialog.serve.pool import SessionPool

log = logging.getLogger("mmdialog.serve")
PUBLIC_PATHS = {"/health", "/"}  # the page holds no data; it asks for the key and sends it with each call
LOCAL_NAMES = {"localhost", "localhost.localdomain"}


@dataclass
class Capacity:
    workers: int = 4  # requests parsed, tokenised and generated at once (threads); the rest wait
    queue: int = 64  # requests waiting beyond the workers; more are refused with 429
    timeout_s: float = 300.0  # a request not done by then (queueing included) gets 504


class Admission:
    """Counts the requests in the server (working or waiting) and the bytes of their bodies not yet parsed (at
    most a body's limit per worker: waiting requests must not hold hundreds of MB); touched only on the loop."""

    def __init__(self, capacity: Capacity, max_body_bytes: int):
        self.capacity = capacity
        self.limiter = anyio.CapacityLimiter(capacity.workers)
        self.inside = 0
        self.body_bytes, self.body_budget = 0, capacity.workers * max_body_bytes

    def hold_body(self, n: int) -> None:
        if self.body_bytes + n > self.body_budget:
            raise APIError(429, f"the server is busy: it holds {self.body_bytes} bytes of request bodies not yet "
                                f"parsed, the most it takes; retry shortly", code="rate_limit_exceeded",
                           type="rate_limit_error", headers={"Retry-After": "1"})
        self.body_bytes += n

    def enter(self) -> None:
        if self.inside >= self.capacity.workers + self.capacity.queue:
            raise APIError(429, f"the server is busy: {self.inside} requests are in progress or queued, the most "
                                f"it takes; retry shortly", code="rate_limit_exceeded", type="rate_limit_error",
                           headers={"Retry-After": "1"})
        self.inside += 1

    def leave(self) -> None:
        self.inside -= 1

    def stats(self) -> dict:
        working = self.limiter.borrowed_tokens
        return {"working": working, "waiting": max(0, self.inside - working), "workers": self.capacity.workers,
                "queue": self.capacity.queue}


def create_app(model, processor, *, model_name: str = "mmdialog", api_key: str | Sequence[str] | None = None,
               allow_dir: str | Path | None = None, limits: Limits | None = None,
               cache_bytes: int = 512 * 2**20, capacity: Capacity | None = None,
               allowed_hosts: Sequence[str] | None = None) -> FastAPI:
    """api_key: one key or several; sessions are reused only within one key's requests.
    allowed_hosts: Host header names accepted besides IP addresses and localhost; None: no Host check
    (`serve` always checks, with the address it binds and --allowed-host)."""
    limits = limits or Limits()
    capacity = capacity or Capacity()
    keys = [api_key] if isinstance(api_key, str) else list(api_key or [])
    allow = allowed_dir(allow_dir)
    hosts = None if allowed_hosts is None else {h.lower().strip("[]") for h in allowed_hosts} | LOCAL_NAMES
    image_size = processor.image_size if "image" in model.encoders else None
    pool = session_pool(model, processor, cache_bytes)
    admission = Admission(capacity, limits.max_body_bytes)
    model_bytes = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    created = int(time.time())
    app = FastAPI(title="mmdialog", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.pool, app.state.admission = pool, admission
    add_error_handlers(app)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        try:
            check_request(request, hosts, keys)
        except APIError as e:
            return error_response(e)
        return await call_next(request)

    @app.get("/health")
    async def health():  # on the event loop: never queued behind model work
        return {"status": "ok", "model": model_name, **pool.stats(), "resident_bytes": resident_bytes(),
                "model_bytes": model_bytes, **admission.stats()}

    @app.get("/", response_class=HTMLResponse)
    async def page():
        return PAGE.replace("{{MODEL}}", model_name)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": created, "owned_by": "mmdialog"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request):
        admission.enter()
        try:
            deadline = time.monotonic() + capacity.timeout_s
            work = in_worker(admission, deadline, capacity.timeout_s)
            req = await read_request(request, work, limits, admission, allow, image_size)
            if req.model is not None and req.model != model_name:
                raise APIError(404, f"model {req.model!r} does not exist; this server serves {model_name!r}", "model",
                               "model_not_found")
            tenant = tenant_of(getattr(request.state, "key", ""), req.cache_salt)
            session, source, stream = await work(start, pool, req, tenant)
        except BaseException:
            admission.leave()
            raise
        rid, now = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if not req.stream:
            try:
                text = await work(finish, pool, session, source, stream, tenant, deadline, capacity.timeout_s)
            finally:
                admission.leave()
            return completion(rid, now, model_name, text, stream.reply)

        async def events():
            try:
                async for chunk in sse(work, pool, session, source, stream, tenant, req.include_usage, rid, now,
                                       model_name):
                    yield chunk
            finally:
                admission.leave()

        return StreamingResponse(events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    return app


def allowed_dir(allow_dir: str | Path | None) -> Path | None:
    """--allow-dir resolved: the one directory local media paths may name (None: none may)."""
    allow = Path(allow_dir).resolve() if allow_dir else None
    if allow is not None and not allow.is_dir():
        raise MMDialogError(f"--allow-dir {allow_dir} is not a directory")
    return allow


def session_pool(model, processor, cache_bytes: int) -> SessionPool:
    model_lock = threading.Lock()  # one forward pass at a time; requests interleave token by token
    return SessionPool(lambda media: ChatSession(model, processor, media_cache=media, lock=model_lock), cache_bytes)


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def api_error(request, e: APIError):
    return error_response(e)


async def http_error(request, e: StarletteHTTPException):
    message = {404: f"no such endpoint: {request.method} {request.url.path}",
               405: f"method {request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
    return error_response(APIError(e.status_code, message, code="not_found" if e.status_code == 404 else None))


async def server_error(request, e: Exception):
    log.exception("internal error on %s", request.url.path)
    return error_response(APIError(500, f"internal server error ({type(e).__name__}); see the server log",
                                   type="server_error"))


def add_error_handlers(app: FastAPI) -> None:
    """Every error as OpenAI's error JSON: a client's as its 4xx, anything else as a 500 naming only its type."""
    app.add_exception_handler(APIError, api_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, server_error)


def check_request(request: Request, hosts: set[str] | None, keys: list[str]) -> None:
    """What every request must pass before its route runs: the Host header, the API key (its name kept in
    request.state.key) and, for a POST, a JSON body; else an APIError."""
    if hosts is not None:
        check_host(request.headers.get("host", ""), hosts)
    if keys and request.url.path not in PUBLIC_PATHS:
        request.state.key = check_key(request.headers.get("authorization", ""), keys)
    if request.method == "POST":
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            raise APIError(415, f"the request body must be sent as Content-Type: application/json "
                                f"(got {kind or 'none'!r})", code="unsupported_media_type")


def in_worker(admission: Admission, deadline: float, timeout_s: float):
    """work(fn, *args): fn(*args) in a worker thread (waiting for one in the queue), within the request's deadline."""

    async def work(fn, *args):
        try:
            with anyio.fail_after(max(0.0, deadline - time.monotonic())):
                return await anyio.to_thread.run_sync(fn, *args, limiter=admission.limiter)
        except TimeoutError:
            raise timed_out(timeout_s) from None

    return work


async def read_request(request: Request, work, limits: Limits, admission: Admission, allow: Path | None,
                       image_size: int | None):
    """The request's body read (its bytes counted in admission.body_bytes until it is parsed) and parsed by
    `parse` in a worker thread."""
    held = [0]  # body bytes counted in admission.body_bytes until the body is parsed
    try:
        raw = await read_body(request, limits.max_body_bytes, admission, held)
        return await work(parse, raw, limits, allow, image_size)
    finally:
        admission.body_bytes -= held[0]
        raw = None  # not kept by a traceback that holds this frame


def check_host(header: str, hosts: set[str]) -> None:
    """A Host header is an IP address, a local name, or one the operator allowed: a page on another site that
    a DNS record points at this machine (rebinding) sends its own name and is refused."""
    name = host_name(header)
    try:
        ipaddress.ip_address(name)
        return
    except ValueError:
        pass
    if name not in hosts:
        raise APIError(400, f"the Host header {header!r} is not a name this server answers to; start it with "
                            f"--allowed-host {name or 'NAME'} to accept it", code="invalid_host")


def host_name(header: str) -> str:
    """'Example.org:8000' -> 'example.org', '[::1]:8000' -> '::1'."""
    h = header.strip().lower()
    if h.startswith("["):
        return h[1:h.find("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def check_key(header: str, keys: list[str]) -> str:
    """Which key the Authorization header holds ('key0', 'key1', ...); the scheme is case-insensitive."""
    scheme, _, token = header.strip().partition(" ")
    token = token.strip().encode() if scheme.lower() == "bearer" else b""
    found = ""
    for i, k in enumerate(keys):  # every key compared, in constant time each
        if hmac.compare_digest(token, k.encode()) and not found:
            found = f"key{i}"
    if not found:
        what = "missing" if not header else "wrong"
        raise APIError(401, f"{what} API key: send the header 'Authorization: Bearer KEY'", code="invalid_api_key")
    return found


def tenant_of(key: str, salt: str) -> str:
    """Requests share cached sessions and encodings only with the same key and the same cache salt."""
    return hashlib.sha256(f"{key}\0{salt}".encode()).hexdigest()[:32] if key or salt else ""


def timed_out(seconds: float) -> APIError:
    return APIError(504, f"the request did not finish within the server's timeout of {seconds:g} s; "
                         "retry later or ask for fewer tokens", code="timeout", type="server_error")


def resident_bytes() -> int:
    """The process's resident memory now (Linux), else its peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


async def read_body(request: Request, max_bytes: int, admission: Admission, held: list[int]) -> bytes:
    """The body, at most max_bytes; what is read is added to admission's count and to held[0]."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise APIError(413, f"the request body is {int(declared)} bytes, over the limit of {max_bytes}",
                       code="request_too_large")
    chunks = []
    async for chunk in request.stream():
        if held[0] + len(chunk) > max_bytes:
            raise APIError(413, f"the request body is over the limit of {max_bytes} bytes", code="request_too_large")
        admission.hold_body(len(chunk))
        held[0] += len(chunk)
        chunks.append(chunk)
    return b"".join(chunks)


def parse(raw: bytes, limits: Limits, allow: Path | None, image_size: int | None):
    """The request body, parsed and checked (JSON, base64, images decoded); in a worker thread."""
    try:
        body = json.loads(raw)
    except RecursionError:
        raise APIError(400, "the request body is not valid JSON for this server: it nests arrays or objects too "
                            "deeply", code="invalid_json") from None
    except ValueError as e:  # JSONDecodeError, and bytes that are not UTF-8
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None
    return parse_request(body, limits, allow, image_size)


def start(pool: SessionPool, req, tenant: str):
    """Take a session for the request and prefill it; errors here (context too long) become 400s."""
    try:
        session, source = pool.checkout(req.conversation, tenant)
        stream = session.generate_stream(commit=True, sampling=req.sampling)
    except MMDialogError as e:
        raise APIError(400, str(e), "messages", "context_length_exceeded" if "max_seq_len" in str(e) else None) from None
    return session, source, stream


def finish(pool, session, source, stream, tenant, deadline: float, timeout_s: float) -> str:
    try:
        for _ in stream:
            if time.monotonic() > deadline:
                raise timed_out(timeout_s)
    finally:
        stream.close()  # a no-op once the reply is complete; else the turn is abandoned
    pool.checkin(session, source, tenant)
    return stream.reply.text


def completion(rid: str, created: int, model_name: str, text: str, r) -> dict:
    """The JSON reply to a request without `stream`."""
    return {"id": rid, "object": "chat.completion", "created": created, "model": model_name,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": r.finish_reason}],
            "usage": usage(r)}


def usage(r) -> dict:
    return {"prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "total_tokens": r.prompt_tokens + r.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": r.cached_tokens}}


async def sse(work, pool, session, source, stream, tenant, include_usage, rid, created, model_name):
    """OpenAI's chunk format: a role chunk, content chunks, a finish chunk, [usage chunk], then [DONE].
    Each piece is decoded in a worker thread (`work`), so decoding never blocks the event loop."""

    def event(delta, finish_reason=None, **extra):
        chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}], **extra}
        return f"data: {json.dumps(chunk)}\n\n"

    try:
        yield event({"role": "assistant", "content": ""})
        while (piece := await work(next, stream, None)) is not None:
            yield event({"content": piece})
        await work(pool.checkin, session, source, tenant)
        yield event({}, stream.reply.finish_reason)
        if include_usage:
            chunk = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                     "choices": [], "usage": usage(stream.reply)}
            yield f"data: {json.dumps(chunk)}\n\n"
    except APIError as e:  # the timeout: headers are sent, so it is reported in the stream, as OpenAI does
        yield f"data: {json.dumps(e.body())}\n\n"
    except Exception as e:
        log.exception("error while streaming %s", rid)
        yield f"data: {json.dumps(APIError(500, f'generation failed ({type(e).__name__})', type='server_error').body())}\n\n"
    finally:
        stream.close()  # a client that went away abandons the turn (the session is not kept)
    yield "data: [DONE]\n\n"


def serve(checkpoint: str, *, host: str = "127.0.0.1", port: int = 8000, api_key: str | Sequence[str] | None = None,
          allow_dir: str | None = None, model_name: str | None = None, max_new_tokens: int = 64,
          cache_mb: int = 512, max_body_mb: float = 16, max_images: int = 8, max_image_pixels: int = 4096 * 4096,
          workers: int = 4, queue: int = 64, timeout_s: float = 300.0, allowed_hosts: Sequence[str] = ()) -> None:
    import uvicorn

    from mmdialog.modelio import load_any

    ck = load_any(checkpoint)  # a training checkpoint or an export
    name = model_name or "mmdialog"
    limits = Limits(max_body_bytes=int(max_body_mb * 2**20), max_images=max_images, max_new_tokens=max_new_tokens,
                    max_image_pixels=max_image_pixels)
    app = create_app(ck.model, ck.processor, model_name=name, api_key=api_key, allow_dir=allow_dir, limits=limits,
                     cache_bytes=cache_mb * 2**20, capacity=Capacity(workers, queue, timeout_s),
                     allowed_hosts=[host, *allowed_hosts])
    if api_key:
        auth = "an API key" if isinstance(api_key, str) or len(api_key) == 1 else f"{len(api_key)} API keys"
    else:
        auth = "no API key: anyone who can reach this address can use it; set --api-key or MMDIALOG_API_KEY"
    print(f"serving {name} on http://{host}:{port}/ ({auth}; chat page at /, API at /v1/chat/completions)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
