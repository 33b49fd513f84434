"""OpenAI chat records, one JSON object per line:

    {"messages": [{"role": "system", "content": "You are terse."},
                  {"role": "user", "content": [
                      {"type": "text", "text": "What is this?"},
                      {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0..."}},
                      {"type": "input_audio", "input_audio": {"data": "<base64>", "format": "wav"}}]},
                  {"role": "assistant", "content": "A cat."}]}

`content` is a string or a list of parts: `text`, `image_url` (a data URI, or a file path under the
media root; remote URLs are refused) and `input_audio` (base64 `data` with its `format`; as an
mmdialog extension, `path` may name a file under the media root instead). Parts stay in order.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

import numpy as np
from PIL import Image as PILImage

from mmdialog.data.conversation import Audio, Conversation, Image, Text, Turn
from mmdialog.data.formats.common import (
    MALFORMED, UNDECODABLE, MediaRoot, RecordError, check_not_empty, check_roles, expect, field_name, map_role,
    message_weight,
)
from mmdialog.errors import MMDialogError

NAME = "openai"
ROLES = {"system": "system", "user": "user", "assistant": "assistant"}
_DATA_URI = re.compile(r"^data:([\w/+.-]*)(;[\w=.-]+)*?(;base64)?,", re.ASCII)


def _b64(data, field: str) -> bytes:
    try:
        return base64.b64decode(expect(data, str, field), validate=True)
    except (binascii.Error, ValueError):
        raise RecordError(UNDECODABLE, f"field {field} is not valid base64") from None


def decode_image(data: bytes, field: str) -> np.ndarray:
    buf = io.BytesIO(data)
    try:
        with PILImage.open(buf) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises many types for broken data
        raise RecordError(UNDECODABLE, f"field {field}: cannot decode the image "
                                       f"({str(e).replace(repr(buf), 'data')})") from None


def _image(part: dict, media: MediaRoot, field: str) -> Image:
    spec = part.get("image_url")
    url = spec.get("url") if isinstance(spec, dict) else spec
    url = expect(url, str, field + ".image_url.url")
    m = _DATA_URI.match(url)
    if m is None:
        return Image(path=media.resolve(url, field + ".image_url.url"))
    if not m.group(3):
        raise RecordError(UNDECODABLE, f"field {field}.image_url.url is a data URI without ';base64'")
    return Image(pixels=decode_image(_b64(url[m.end():], field + ".image_url.url"), field + ".image_url.url"))


def _audio(part: dict, media: MediaRoot, field: str) -> Audio:
    spec = expect(part.get("input_audio"), dict, field + ".input_audio")
    fmt = spec.get("format")
    if fmt is not None:
        expect(fmt, str, field + ".input_audio.format")
    if "path" in spec:
        return Audio(path=media.resolve(spec["path"], field + ".input_audio.path"), format=fmt)
    if fmt is None:
        raise RecordError(MALFORMED, f"field {field}.input_audio has data but no 'format' (wav, mp3, ...)")
    return Audio(data=_b64(spec.get("data"), field + ".input_audio.data"), format=fmt)


def from_record(rec, media: MediaRoot) -> Conversation:
    expect(rec, dict, "record")
    msgs = expect(rec.get("messages"), list, field_name("messages"))
    roles, names, parts_of, string_content, weights = [], [], [], [], []
    for i, m in enumerate(msgs):
        name = field_name("messages", i)
        expect(m, dict, name)
        roles.append(map_role(m.get("role"), ROLES, field_name("messages", i, "role")))
        names.append(name)
        weights.append(message_weight(m, field_name("messages", i, "weight")))
        content = m.get("content")
        if content is None or isinstance(content, str):
            string_content.append(i)
            parts_of.append([Text(content)] if content else [])
            continue
        expect(content, list, field_name("messages", i, "content"))
        parts = []
        for j, part in enumerate(content):
            field = field_name("messages", i, "content") + f"[{j}]"
            expect(part, dict, field)
            kind = part.get("type")
            if kind == "text":
                parts.append(Text(expect(part.get("text"), str, field + ".text")))
            elif kind == "image_url":
                parts.append(_image(part, media, field))
            elif kind == "input_audio":
                parts.append(_audio(part, media, field))
            else:
                raise RecordError(MALFORMED, f"field {field}.type is {kind!r}; supported: text, image_url, input_audio")
        parts_of.append(parts)
    check_roles(roles, names)
    turns = [Turn(role, parts, w) for role, parts, w in zip(roles, parts_of, weights)]
    check_not_empty(turns, names)
    extra = {k: v for k, v in rec.items() if k != "messages"}
    return Conversation(turns, {"record": extra, "style": {"string_content": string_content}})


def encode_png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    PILImage.fromarray(pixels).save(buf, format="PNG")
    return buf.getvalue()


def to_record(conv: Conversation, media: MediaRoot) -> dict:
    """The OpenAI chat record of a conversation: images by path (relative to the media root) or, without
    a path, as PNG data URIs; audio by path or as base64 data."""
    style = conv.meta.get("style", {})
    strings = style.get("string_content")
    rec = dict(conv.meta.get("record") or ({"id": conv.meta["id"]} if "id" in conv.meta else {}))
    msgs = []
    for i, turn in enumerate(conv.turns):
        where = f"OpenAI record, turn {i}"
        texts_only = all(isinstance(p, Text) for p in turn.parts) and len(turn.parts) <= 1
        as_string = (i in strings) if strings is not None else texts_only
        if as_string and texts_only:
            msgs.append({"role": turn.role, "content": turn.parts[0].text if turn.parts else "", **_weight(turn)})
            continue
        content = []
        for p in turn.parts:
            if isinstance(p, Text):
                content.append({"type": "text", "text": p.text})
            elif isinstance(p, Image):
                url = media.relative(p.path, where) if p.path is not None else \
                    "data:image/png;base64," + base64.b64encode(encode_png(p.load())).decode("ascii")
                content.append({"type": "image_url", "image_url": {"url": url}})
            elif isinstance(p, Audio):
                if p.path is not None:
                    spec = {"path": media.relative(p.path, where)}
                    if p.format:
                        spec["format"] = p.format
                else:
                    spec = {"data": base64.b64encode(p.read_bytes()).decode("ascii"), "format": p.format}
                content.append({"type": "input_audio", "input_audio": spec})
            else:
                raise MMDialogError(f"{where}: OpenAI chat records hold no {p.type} parts")
        msgs.append({"role": turn.role, "content": content, **_weight(turn)})
    rec["messages"] = msgs
    return rec


def _weight(turn) -> dict:
    return {"weight": int(turn.weight) if float(turn.weight).is_integer() else turn.weight} if turn.weight != 1 else {}
