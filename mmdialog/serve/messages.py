"""OpenAI chat-completions request bodies -> (Conversation, SamplingParams), or an APIError saying what is wrong.

    body --ChatCompletionRequest (pydantic: shapes, types, ranges)--> models --conversation, sampling-->
    Conversation (images decoded), SamplingParams

Content is a string or a list of parts: {"type": "text", "text": ...} and {"type": "image_url",
"image_url": {"url": ...}} where the url is a `data:image/...;base64,` URI, or a local file path
(`/abs/path.png` or `file:///abs/path.png`) inside the directory the operator allowed. Remote
URLs are never fetched. Every error names the field, as `messages[2].content[1].image_url`: the
models say in their validators what a field must be, and `api_error` turns pydantic's first error
(its `loc`) into that name. Fields of OpenAI's API that this server does not use are ignored.

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
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, ClassVar, Literal
from urllib.parse import unquote, urlparse

import numpy as np
from PIL import Image as PILImage
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Discriminator, Field, StrictBool,
                      StrictFloat, StrictInt, StrictStr, Tag, ValidationError, ValidationInfo, WrapValidator,
                      model_validator)
from pydantic_core import PydanticCustomError

from mmdialog.chat.sampling import SamplingParams
from mmdialog.data.conversation import Conversation, Image, Part, Text, Turn

ROLE_NAMES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
UNSUPPORTED_PARTS = ("input_audio", "audio_url", "video_url", "file")


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


# ----------------------------------------------------------------------------- errors in this server's words

def fail(template: str, got=None, code: str = "invalid_value") -> PydanticCustomError:
    """An error for pydantic to place; `api_error` fills in {where} (the field's name) and {got} (repr of got)."""
    return PydanticCustomError(code, "{template}", {"template": template, "got": repr(got)})


def says(template: str) -> WrapValidator:
    """Any failure of the value's type or range, as `template` (a leaf field: nothing inside it fails alone)."""
    def check(value, handler):
        try:
            return handler(value)
        except ValidationError:
            raise fail(template, value) from None

    return WrapValidator(check)


def unicode(value):
    """A string is valid Unicode text (JSON's \\udc00 escapes can spell a lone surrogate, which is not); checked
    before the type (pydantic's length checks fail on a lone surrogate in their own words)."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:
            raise fail(f"{{where}} is not valid Unicode text: it holds the lone surrogate {value[e.start]!r} at "
                       f"character {e.start}") from None
    return value


Unicode = BeforeValidator(unicode)  # last in an Annotated, so that it runs first


def where(loc: tuple) -> str | None:
    """pydantic's ('messages', 2, 'content', 1, 'type=image_url', 'image_url') -> 'messages[2].content[1].image_url';
    the names of union branches (the Tags below) are not identifiers, and are left out."""
    name = ""
    for x in loc:
        if isinstance(x, int):
            name += f"[{x}]"
        elif x.isidentifier():
            name += f".{x}" if name else x
    return name or None


def api_error(e: ValidationError) -> APIError:
    """The first of pydantic's errors (the first field in the body's order), as a 400 naming the field."""
    err = e.errors(include_url=False)[0]
    param, ctx = where(err["loc"]), err.get("ctx") or {}
    if "template" not in ctx:  # pydantic's own words: every field here says what it must be, so not expected
        return bad(f"{param or 'the request body'}: {err['msg']}", param)
    message = ctx["template"].replace("{where}", param or "the request body").replace("{got}", ctx["got"])
    return bad(message, param, err["type"])


def number(what: str, **bounds):
    """A JSON number (not a boolean, not NaN or infinity) in bounds, or null; `what` says which for the error."""
    return Annotated[Annotated[StrictFloat, Field(allow_inf_nan=False, **bounds)] | None,
                     says(f"{{where}} must be {what}, got {{got}}")]


def integer(what: str, **bounds):
    """A JSON integer (2.0 too, not true) in bounds, or null."""
    def integral(v):
        return int(v) if isinstance(v, float) and v.is_integer() else v

    return Annotated[Annotated[StrictInt, Field(**bounds)] | None, BeforeValidator(integral),
                     says(f"{{where}} must be {what}, got {{got}}")]


Flag = Annotated[StrictBool | None, says("{where} must be true or false, got {got}")]
MaxTokens = Annotated[Annotated[StrictInt, Field(ge=1)] | None, says("{where} must be an integer >= 1, got {got}")]
Name = Annotated[StrictStr | None, says("{where} must be a string"), Unicode]


# ----------------------------------------------------------------------------- the request body's models

class Object(BaseModel):
    """A JSON object of the request body. Unknown fields are ignored; a missing field is validated as null,
    so it gets the field's own error (most fields take null as "not given")."""

    model_config = ConfigDict(extra="ignore", validate_default=True)
    what: ClassVar[str] = "an object"  # for the error when the value is no object
    code: ClassVar[str] = "invalid_value"

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, value):
        if not isinstance(value, (dict, cls)):
            raise fail(f"{{where}} must be {cls.what}", value, cls.code)
        return value


class TextPart(Object):
    type: Literal["text"] = "text"
    text: Annotated[StrictStr, says("{where} must be a string"), Unicode] = None


class ImageURL(Object):
    url: Annotated[StrictStr, Field(min_length=1), says("{where} must be a string"), Unicode] = None


def url_object(value):
    """{"image_url": "data:..."} is taken as {"image_url": {"url": "data:..."}}."""
    return value if isinstance(value, (dict, ImageURL)) else {"url": value}


class ImagePart(Object):
    type: Literal["image_url"]
    image_url: Annotated[ImageURL, BeforeValidator(url_object)] = None


def part_type(value):
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    if kind in UNSUPPORTED_PARTS:
        raise fail(f"{{where}}: {kind} parts are not supported by this model (it takes text and images)",
                   code="unsupported_content")
    if kind not in ("text", "image_url"):
        raise fail(f"{{where}} must be an object with type 'text' or 'image_url', got {kind!r}")
    return value


def part_tag(value) -> str:
    return "type=" + (value["type"] if isinstance(value, dict) else value.type)


ContentPart = Annotated[Annotated[TextPart, Tag("type=text")] | Annotated[ImagePart, Tag("type=image_url")],
                        Discriminator(part_tag), BeforeValidator(part_type)]


def content_parts(value, info: ValidationInfo):
    """A string is one text part; an assistant message without content (it called tools) one empty text part."""
    if value is None and info.data.get("role") == "assistant":
        return [TextPart(text="")]
    if isinstance(value, str):
        return [TextPart(text=unicode(value))]  # checked here, so that an error names the content
    if not isinstance(value, list):
        raise fail("{where} must be a string or a list of parts", value)
    return value


class Message(Object):
    what: ClassVar[str] = "an object with role and content"
    role: Annotated[Literal["system", "developer", "user", "assistant"],
                    says("{where} {got} is not supported; use one of: system, developer, user, assistant")] = None
    content: Annotated[list[ContentPart], BeforeValidator(content_parts)] = None


def message_list(value, info: ValidationInfo):
    if not isinstance(value, list):
        raise fail("{where} must be a list of {role, content} objects", value,
                   "missing_required_parameter" if value is None else "invalid_type")
    if not value:
        raise fail("{where} is empty: send at least one user message")
    limit = (info.context or {}).get("max_messages")
    if limit is not None and len(value) > limit:  # before any message is looked at
        raise fail(f"{len(value)} messages, over the limit of {limit}")
    return value


class Dialogue(Object):
    messages: Annotated[list[Message], BeforeValidator(message_list)] = None


class StreamOptions(Object):
    include_usage: Flag = None


def stop_list(value):
    """One stop string or a list of them; each valid Unicode text."""
    value = [value] if isinstance(value, str) else value
    for s in value if isinstance(value, list) else ():
        unicode(s)
    return value


Stop = Annotated[Annotated[list[Annotated[StrictStr, Field(min_length=1)]], Field(max_length=4)] | None,
                 says("{where} must be a non-empty string or a list of at most 4 of them"), BeforeValidator(stop_list)]


class ChatCompletionRequest(Dialogue):
    """The fields this server reads; null is "not given" for each but messages."""

    what: ClassVar[str] = "a JSON object"
    code: ClassVar[str] = "invalid_json"
    model: Name = None
    temperature: number("a number in [0, 2]", ge=0, le=2) = None
    top_p: number("a number in (0, 1]", gt=0, le=1) = None
    top_k: integer("an integer >= 0", ge=0) = None
    repetition_penalty: number("a number > 0", gt=0) = None
    seed: integer("an integer") = None
    max_tokens: MaxTokens = None
    max_completion_tokens: MaxTokens = None  # OpenAI's newer name; it wins over max_tokens
    stop: Stop = None
    n: Annotated[Literal[1] | None, says("{where} must be 1 (one choice per request), got {got}")] = None
    stream: Flag = None
    stream_options: StreamOptions | None = None
    user: Name = None  # vLLM's cache_salt and OpenAI's user both narrow cache reuse; either or both may be given
    cache_salt: Annotated[Annotated[StrictStr, Field(min_length=1)] | None, says("{where} must be a non-empty string"),
                          Unicode] = None


# ----------------------------------------------------------------------------- models -> Conversation, SamplingParams

def parse_request(body, limits: Limits, allow_dir: Path | None = None, image_size: int | None = None) -> ChatRequest:
    """image_size: the image encoder's input size, to which images are resized as they are decoded
    (None: the model takes no images, and a request with one is refused)."""
    try:
        r = ChatCompletionRequest.model_validate(body, context={"max_messages": limits.max_messages})
    except ValidationError as e:
        raise api_error(e) from None
    return ChatRequest(conversation(r.messages, limits, allow_dir, image_size), sampling(r, limits),
                       stream=bool(r.stream), include_usage=bool(r.stream_options and r.stream_options.include_usage),
                       model=r.model, cache_salt="\0".join(s for s in (r.cache_salt, r.user) if s))


def sampling(r: ChatCompletionRequest, limits: Limits) -> SamplingParams:
    max_tokens = r.max_completion_tokens if r.max_completion_tokens is not None else r.max_tokens
    return SamplingParams(max_new_tokens=max_tokens or limits.max_new_tokens).replace(
        temperature=r.temperature, top_p=r.top_p, top_k=r.top_k, repetition_penalty=r.repetition_penalty, seed=r.seed,
        stop=r.stop)


def parse_messages(messages, limits: Limits, allow_dir: Path | None, image_size: int | None = 0) -> Conversation:
    """image_size: resize images to it as they are decoded; 0: keep them as they are; None: refuse images."""
    try:
        d = Dialogue.model_validate({"messages": messages}, context={"max_messages": limits.max_messages})
    except ValidationError as e:
        raise api_error(e) from None
    return conversation(d.messages, limits, allow_dir, image_size)


def conversation(messages: list[Message], limits: Limits, allow_dir: Path | None,
                 image_size: int | None) -> Conversation:
    """What depends on the server (images: whether, how many, from where) and on the order of the messages."""
    turns, images = [], 0
    for i, m in enumerate(messages):
        parts: list[Part] = []
        for j, p in enumerate(m.content):
            if isinstance(p, TextPart):
                parts.append(Text(p.text))
                continue
            pw = f"messages[{i}].content[{j}]"
            if m.role != "user":
                raise bad(f"{pw}: only user messages may carry images", pw)
            if image_size is None:
                raise bad(f"{pw}: this model takes no images (it has no image encoder)", pw, "unsupported_content")
            images += 1
            if images > limits.max_images:  # before this one is decoded
                raise bad(f"too many images: more than {limits.max_images} in one request", f"messages[{i}].content")
            parts.append(load_image(p.image_url.url, f"{pw}.image_url.url", limits, allow_dir, image_size))
        turns.append(Turn(ROLE_NAMES[m.role], parts))
    if turns[-1].role != "user":
        raise bad(f"the last message must be from the user (it is {messages[-1].role!r}): "
                  "the model replies to the user", f"messages[{len(messages) - 1}].role")
    return Conversation(turns)


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
