"""What the format converters share: the reasons a record is refused, media paths under a root,
media tags in text, and the checks on roles and replies that every format applies.

A converter raises RecordError for a record it cannot use; the reader reports it with the
record's line and reads on. `str(RecordError)` is "<reason>: <detail>", where the reason is one
of the REASONS below, so reports can be grouped by reason.
"""

from __future__ import annotations

import re
from collections import deque
from pathlib import Path
from typing import Iterable

from mmdialog.data.conversation import MEDIA_PARTS, Part, Text, Turn
from mmdialog.errors import MMDialogError
from mmdialog.modalities import MODALITIES, by_name

NOT_JSON = "not valid JSON"
MALFORMED = "malformed record"
ROLE_ORDER = "role order broken"
TAG_COUNT = "tag count differs from media count"
OUTSIDE_ROOT = "media path leaves the media root"
MISSING_MEDIA = "missing media"
UNDECODABLE = "undecodable media"
EMPTY_REPLY = "empty reply"
EMPTY_MESSAGE = "empty message"
TOO_LONG = "over the maximum length"
RESERVED = "reserved token in text"
UNSUPPORTED = "media the model cannot encode"
REASONS = (NOT_JSON, MALFORMED, ROLE_ORDER, TAG_COUNT, OUTSIDE_ROOT, MISSING_MEDIA, UNDECODABLE, EMPTY_REPLY,
           EMPTY_MESSAGE, TOO_LONG, RESERVED, UNSUPPORTED)


class RecordError(Exception):
    """Why one record cannot be used (one of REASONS) and the details: field, numbers, path."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def field_name(key: str, *index: int | str) -> str:
    """'conversations'[2].value -> the way reasons name a field."""
    out = repr(key)
    for i in index:
        out += f"[{i}]" if isinstance(i, int) else f".{i}"
    return out


def message_weight(message: dict, field: str) -> float:
    """A message's optional loss weight (OpenAI fine-tuning files put "weight": 0 or 1 on assistant messages):
    a number >= 0, 1 when absent."""
    w = message.get("weight", 1)
    if isinstance(w, bool) or not isinstance(w, (int, float)) or w < 0:
        raise RecordError(MALFORMED, f"field {field} should be a number >= 0, got {_short(w)}")
    return float(w)


def expect(value, types, field: str):
    """value if it has one of the types (a bool is no int), else a MALFORMED RecordError naming the field."""
    types = types if isinstance(types, tuple) else (types,)
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        names = " or ".join({"str": "a string", "list": "a list", "dict": "an object"}.get(t.__name__, t.__name__)
                            for t in types)
        raise RecordError(MALFORMED, f"field {field} should be {names}, got {_short(value)}")
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------- media paths

class MediaRoot:
    """Resolves the media paths of records; a path that leaves the root (by '..', an absolute path
    elsewhere or a symlink pointing out) is refused."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()

    def resolve(self, value, field: str) -> str:
        """The absolute path of a record's media path, or a RecordError naming the field."""
        if not isinstance(value, str) or not value.strip():
            raise RecordError(MALFORMED, f"field {field} should be a file path, got {_short(value)}")
        if value.startswith("file://"):
            value = value[len("file://"):]
        elif re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", value):
            raise RecordError(MISSING_MEDIA, f"field {field} is the URL {_short(value)}; remote media are not fetched")
        full = (self.root / value).resolve()  # an absolute value replaces the root
        if not full.is_relative_to(self.root):
            raise RecordError(OUTSIDE_ROOT, f"field {field} path {value!r} resolves to {full}, outside {self.root}")
        return str(full)

    def relative(self, path: str, where: str) -> str:
        """A media part's path as a record writes it: relative to the root, with '/' separators."""
        full = Path(path).resolve()
        if not full.is_relative_to(self.root):
            raise MMDialogError(f"{where}: {path} is outside the media root {self.root}; records hold paths under it")
        return full.relative_to(self.root).as_posix()


# ----------------------------------------------------------------------------- tags in text

TAGS = {m.name: m.tag for m in MODALITIES}  # {"image": "<image>", ...}
_KIND = {m.tag: m.name for m in MODALITIES}
_TAG = re.compile("|".join(map(re.escape, _KIND)))


def count_tags(texts: Iterable[str], kinds: Iterable[str]) -> dict[str, int]:
    counts = {k: 0 for k in kinds}
    for text in texts:
        for m in _TAG.finditer(text):
            if _KIND[m.group()] in counts:
                counts[_KIND[m.group()]] += 1
    return counts


def check_tag_counts(tags: dict[str, int], media: dict[str, int], text_field: str, media_fields: dict[str, str]) -> None:
    for kind, n_tags in tags.items():
        if n_tags != media[kind]:
            raise RecordError(TAG_COUNT, f"{n_tags} {TAGS[kind]} tag(s) in {text_field} but {media[kind]} "
                                         f"{by_name(kind).noun} in {media_fields[kind]}")


def split_tags(text: str, media: dict[str, deque]) -> list[Part]:
    """Text with media tags -> parts, each tag replaced by the next media part of its kind, in place.
    Tags of kinds not in `media` stay text. The counts were checked before (check_tag_counts)."""
    parts: list[Part] = []
    pos = 0
    for m in _TAG.finditer(text):
        if _KIND[m.group()] not in media:
            continue
        if m.start() > pos:
            parts.append(Text(text[pos:m.start()]))
        parts.append(media[_KIND[m.group()]].popleft())
        pos = m.end()
    if pos < len(text):
        parts.append(Text(text[pos:]))
    return parts


def join_tags(parts: list[Part], media: dict[str, list[Part]], where: str) -> str:
    """Parts -> text with a tag where each media part was; the media parts are appended to media[kind]."""
    out = []
    for p in parts:
        if isinstance(p, Text):
            m = _TAG.search(p.text)
            if m and _KIND[m.group()] in media:
                raise MMDialogError(f"{where}: the text {p.text!r} holds the tag {m.group()}, which this format "
                                    "reads as a media item")
            out.append(p.text)
        elif p.type in media:
            media[p.type].append(p)
            out.append(TAGS[p.type])
        else:
            raise MMDialogError(f"{where}: this format holds no {p.type} parts (it holds {', '.join(media)})")
    return "".join(out)


def media_part(kind: str, path: str) -> Part:
    return MEDIA_PARTS[kind](path=path)


# ----------------------------------------------------------------------------- roles and replies

def check_roles(roles: list[str], names: list[str]) -> None:
    """An optional system turn, then user and assistant alternating, ending with an assistant reply.

    roles are already mapped to system / user / assistant; names[i] names turn i's field in the record.
    """
    if not [r for r in roles if r != "system"]:
        raise RecordError(MALFORMED, f"no user or assistant turns in {names[0] if names else 'the record'}")
    expected = "user"
    for i, (role, name) in enumerate(zip(roles, names)):
        if role == "system":
            if i != 0:
                raise RecordError(ROLE_ORDER, f"{name} is a system turn, but only the first turn may be one")
            continue
        if role != expected:
            raise RecordError(ROLE_ORDER, f"{name} is {_a(role)} turn where {_a(expected)} turn should be "
                                          "(user and assistant alternate, starting with user)")
        expected = "assistant" if role == "user" else "user"
    if expected == "assistant":
        raise RecordError(ROLE_ORDER, f"the last turn, {names[-1]}, is a user turn without a reply")


def check_not_empty(turns: list[Turn], names: list[str]) -> None:
    for turn, name in zip(turns, names):
        if turn.role != "system" and not turn.text.strip() and not [p for p in turn.parts if not isinstance(p, Text)]:
            if turn.role == "assistant":
                raise RecordError(EMPTY_REPLY, f"{name} is an assistant turn without text")
            raise RecordError(EMPTY_MESSAGE, f"{name} is a {turn.role} turn with neither text nor media")


def _a(role: str) -> str:
    return "an assistant" if role == "assistant" else f"a {role}"


def map_role(raw, roles: dict[str, str], field: str) -> str:
    if raw not in roles:
        raise RecordError(MALFORMED, f"field {field} is {_short(raw)}, not one of {sorted(roles)}")
    return roles[raw]
