"""OpenAI chat-completions request bodies -> (Conversation, SamplingParams), or an APIError saying what is wrong.

Content is a string or a list of parts: {"type": "text", "text": ...} and {"type": "image_url",
"image_url": {"url": ...}} where the url is a `data:image/...;base64,` URI, or a local file path
(`/abs/path.png` or `file:///abs/path.png`) inside the directory the operator allowed. Remote
URLs are never fetched. Every error names the field, as `messages[2].content[1].image_url`.

An image's size is read from its header and checked before its pixels are decoded; once decoded
it is resized to the image encoder's input at once (what the processor would do later), so a
request never holds more than one full-size image, and a kept session holds only small ones.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import io
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image as PILImage

from mmdialog.chat.sampling import SamplingParams
from mmdialog.data.conversation import Conversation, Image, Part, Text, Turn

ROLE_NAMES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class APIError(Exception):
    """An error answered as OpenAI does: {"error": {"message", "type", "param", "code"}} with an HTTP status."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.headers = headers  # e.g. Retry-After on a 429

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Limits:
    max_body_bytes: int = 16 * 2**20  # a request body larger than this is refused (413)
    max_images: int = 8  # images in one request (the whole history counts)
    max_image_pixels: int = 4096 * 4096  # per image, from its header before decoding (decompression bombs)
    max_messages: int = 512
    max_new_tokens: int = 64  # default max_tokens when the request gives none


@dataclass
class ChatRequest:
    conversation: Conversation
    sampling: SamplingParams
    stream: bool = False
    include_usage: bool = False
    model: str | None = None
    cache_salt: str = ""  # narrows prefix-cache reuse to requests with the same salt (and the same API key)


def bad(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param, code)


def parse_request(body, limits: Limits, allow_dir: Path | None = None, image_size: int | None = None) -> ChatRequest:
    """image_size: the image encoder's input size, to which images are resized as they are decoded
    (None: the model takes no images, and a request with one is refused)."""
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", code="invalid_json")
    conv = parse_messages(body.get("messages"), limits, allow_dir, image_size)
    return ChatRequest(conv, parse_sampling(body, limits), stream=_bool(body, "stream"),
                       include_usage=_include_usage(body), model=_string(body, "model"), cache_salt=_salt(body))


def _string(body, key) -> str | None:
    v = body.get(key)
    if v is not None and not isinstance(v, str):
        raise bad(f"{key} must be a string", key)
    return v if v is None else check_text(v, key)


def _salt(body) -> str:
    """vLLM's cache_salt and OpenAI's user both narrow cache reuse; either or both may be given."""
    salt, user = _string(body, "cache_salt"), _string(body, "user")
    if salt is not None and not salt:
        raise bad("cache_salt must be a non-empty string", "cache_salt")
    return "\0".join(s for s in (salt, user) if s)


def check_text(value: str, where: str) -> str:
    """A string that is valid Unicode text (JSON's \\udc00 escapes can spell a lone surrogate, which is not)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as e:
        raise bad(f"{where} is not valid Unicode text: it holds the lone surrogate {value[e.start]!r} at "
                  f"character {e.start}", where) from None
    return value


def _bool(body, key) -> bool:
    v = body.get(key, False)
    if v is None:
        return False
    if not isinstance(v, bool):
        raise bad(f"{key} must be true or false, got {v!r}", key)
    return v


def _include_usage(body) -> bool:
    opts = body.get("stream_options")
    if opts is None:
        return False
    if not isinstance(opts, dict):
        raise bad("stream_options must be an object", "stream_options")
    return _bool(opts, "include_usage")


def parse_sampling(body: dict, limits: Limits) -> SamplingParams:
    n = body.get("n", 1)
    if n not in (1, None):
        raise bad(f"n must be 1 (one choice per request), got {n!r}", "n")
    kwargs = {}
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    fields = {  # request key -> (SamplingParams field, kind, check, message)
        "temperature": ("temperature", float, lambda v: 0 <= v <= 2, "a number in [0, 2]"),
        "top_p": ("top_p", float, lambda v: 0 < v <= 1, "a number in (0, 1]"),
        "top_k": ("top_k", int, lambda v: v >= 0, "an integer >= 0"),
        "repetition_penalty": ("repetition_penalty", float, lambda v: v > 0, "a number > 0"),
        "seed": ("seed", int, lambda v: True, "an integer"),
    }
    for key, (name, kind, check, what) in fields.items():
        v = body.get(key)
        if v is None:
            continue
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if kind is int:
            ok = ok and float(v).is_integer()
        if not ok or not check(v):
            raise bad(f"{key} must be {what}, got {v!r}", key)
        kwargs[name] = kind(v)
    if max_tokens is not None:
        key = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise bad(f"{key} must be an integer >= 1, got {max_tokens!r}", key)
        kwargs["max_new_tokens"] = max_tokens
    else:
        kwargs["max_new_tokens"] = limits.max_new_tokens
    stop = body.get("stop")
    if stop is not None:
        stop = [stop] if isinstance(stop, str) else stop
        if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
            raise bad("stop must be a non-empty string or a list of at most 4 of them", "stop")
        kwargs["stop"] = [check_text(s, "stop") for s in stop]
    return SamplingParams(**kwargs)


def parse_messages(messages, limits: Limits, allow_dir: Path | None, image_size: int | None = 0) -> Conversation:
    """image_size: resize images to it as they are decoded; 0: keep them as they are; None: refuse images."""
    if not isinstance(messages, list):
        raise bad("messages must be a list of {role, content} objects", "messages",
                  "missing_required_parameter" if messages is None else "invalid_type")
    if not messages:
        raise bad("messages is empty: send at least one user message", "messages")
    if len(messages) > limits.max_messages:
        raise bad(f"{len(messages)} messages, over the limit of {limits.max_messages}", "messages")
    turns, images = [], 0
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with role and content", where)
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLE_NAMES:
            raise bad(f"{where}.role {role!r} is not supported; use one of: system, developer, user, assistant",
                      f"{where}.role")
        parts = parse_content(m.get("content"), where, role, limits, allow_dir, image_size)
        images += sum(isinstance(p, Image) for p in parts)
        if images > limits.max_images:
            raise bad(f"too many images: more than {limits.max_images} in one request", f"{where}.content")
        turns.append(Turn(ROLE_NAMES[role], parts))
    if turns[-1].role != "user":
        raise bad(f"the last message must be from the user (it is {messages[-1]['role']!r}): "
                  "the model replies to the user", f"messages[{len(messages) - 1}].role")
    return Conversation(turns)


def parse_content(content, where: str, role: str, limits: Limits, allow_dir: Path | None,
                  image_size: int | None = 0) -> list[Part]:
    if content is None and role == "assistant":
        return [Text("")]
    if isinstance(content, str):
        return [Text(check_text(content, f"{where}.content"))]
    if not isinstance(content, list):
        raise bad(f"{where}.content must be a string or a list of parts", f"{where}.content")
    parts: list[Part] = []
    for j, p in enumerate(content):
        pw = f"{where}.content[{j}]"
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text":
            if not isinstance(p.get("text"), str):
                raise bad(f"{pw}.text must be a string", f"{pw}.text")
            parts.append(Text(check_text(p["text"], f"{pw}.text")))
        elif kind == "image_url":
            if role != "user":
                raise bad(f"{pw}: only user messages may carry images", pw)
            if image_size is None:
                raise bad(f"{pw}: this model takes no images (it has no image encoder)", pw, "unsupported_content")
            spec = p.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            if not isinstance(url, str) or not url:
                raise bad(f"{pw}.image_url.url must be a string", f"{pw}.image_url.url")
            url = check_text(url, f"{pw}.image_url.url")
            parts.append(load_image(url, f"{pw}.image_url.url", limits, allow_dir, image_size))
        elif kind in ("input_audio", "audio_url", "video_url", "file"):
            raise bad(f"{pw}: {kind} parts are not supported by this model (it takes text and images)", pw,
                      "unsupported_content")
        else:
            raise bad(f"{pw} must be an object with type 'text' or 'image_url', got {kind!r}", pw)
    return parts


def load_image(url: str, where: str, limits: Limits, allow_dir: Path | None, image_size: int = 0) -> Image:
    if url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if not sep or ";base64" not in head:
            raise bad(f"{where}: a data: URI must be base64, like data:image/png;base64,...", where)
        try:
            data = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad(f"{where}: the data: URI is not valid base64", where) from None
        return decode_image(data, where, limits, image_size)
    parsed = urlparse(url)
    if parsed.scheme in ("http", "https"):
        raise bad(f"{where}: remote image URLs are not fetched; send the image as a data: URI", where,
                  "unsupported_url")
    if parsed.scheme not in ("", "file"):
        raise bad(f"{where}: unsupported URL scheme {parsed.scheme!r}; send a data: URI", where, "unsupported_url")
    if allow_dir is None:
        raise bad(f"{where}: local image paths are not allowed on this server (it was started without "
                  "--allow-dir); send a data: URI", where, "path_not_allowed")
    path = Path(unquote(parsed.path) if parsed.scheme == "file" else url)
    if not path.is_absolute():
        path = allow_dir / path
    real = path.resolve()  # symlinks and .. resolved before the check
    if not real.is_relative_to(allow_dir.resolve()):  # the server's directory is not the client's business
        raise bad(f"{where}: {url} is outside the directory this server allows local images from", where,
                  "path_not_allowed")
    try:
        data = real.read_bytes()
    except OSError:
        raise bad(f"{where}: no readable image at {url}", where, "file_not_found") from None
    return decode_image(data, where, limits, image_size)


BIG_IMAGE = 1 << 20  # pixels: images larger than this are decoded one at a time, whatever the concurrency
_big_decodes = threading.Lock()


def decode_image(data: bytes, where: str, limits: Limits, image_size: int = 0) -> Image:
    """The image's pixels (H, W, 3) uint8, resized to image_size x image_size as the processor would resize
    them (0: as they are). The size is checked from the header before anything is decoded."""
    try:
        with PILImage.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > limits.max_image_pixels:
                raise bad(f"{where}: the image is {w}x{h} = {w * h} pixels, over the limit of "
                          f"{limits.max_image_pixels} pixels per image", where, "image_too_large")
            with _big_decodes if w * h > BIG_IMAGE else contextlib.nullcontext():
                rgb = im if im.mode == "RGB" else im.convert("RGB")
                if image_size and (w, h) != (image_size, image_size):  # as processor.image_to_tensor resizes
                    rgb = rgb.resize((image_size, image_size), PILImage.BILINEAR)
                pixels = np.array(rgb, dtype=np.uint8)
                del rgb
                im.close()
                if w * h > BIG_IMAGE:
                    release_free_memory()
    except APIError:
        raise
    except PILImage.DecompressionBombError:  # PIL's own limit, from the header too
        raise bad(f"{where}: the image is over the limit of {limits.max_image_pixels} pixels per image", where,
                  "image_too_large") from None
    except Exception as e:  # PIL raises many types for bytes that are no image
        raise bad(f"{where}: cannot decode the image ({type(e).__name__}: {e})", where, "invalid_image") from None
    return Image(pixels=pixels)



def release_free_memory() -> None:
    """Give freed heap memory back to the system (glibc's malloc_trim): a freed image of tens of MB is otherwise
    kept by the allocator of the thread that decoded it, and the process stays that much larger."""
    global _trim
    if _trim is None:
        try:
            _trim = ctypes.CDLL(None).malloc_trim
        except (OSError, AttributeError):  # not glibc
            _trim = False
    if _trim:
        _trim(0)


_trim = None
