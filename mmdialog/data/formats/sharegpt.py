"""ShareGPT-style records (the layout of LLaMA-Factory and others), one JSON object per line or a JSON array:

    {"messages": [{"role": "user", "content": "<image>What is this?"},
                  {"role": "assistant", "content": "A cat."}],
     "images": ["cats/1.png"], "videos": [...], "audios": [...], "system": "optional system prompt"}

`conversations` with {"from": "human"|"gpt"|"system", "value": ...} may stand for `messages`. The
`<image>`, `<video>` and `<audio>` tags of all turns, in order, take the items of `images`,
`videos` and `audios` in order; each item stays in the turn where its tag was.
"""

from __future__ import annotations

from collections import deque

from mmdialog.data.conversation import Conversation, Turn
from mmdialog.data.formats.common import (
    MALFORMED, MediaRoot, RecordError, check_not_empty, check_roles, check_tag_counts, count_tags, expect,
    field_name, join_tags, map_role, media_part, message_weight, split_tags,
)
from mmdialog.errors import MMDialogError
from mmdialog.modalities import by_name

NAME = "sharegpt"
ROLES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
WRITE_ROLES = {("role", "content"): {"user": "user", "assistant": "assistant", "system": "system"},
               ("from", "value"): {"user": "human", "assistant": "gpt", "system": "system"}}
# modality -> the record's path list, named like the batch key; in the layout's order (images, videos, audios),
# which the written records keep
LISTS = {n: by_name(n).key for n in ("image", "video", "audio")}


def from_record(rec, media: MediaRoot) -> Conversation:
    expect(rec, dict, "record")
    if "messages" in rec and "conversations" in rec:
        raise RecordError(MALFORMED, "the record has both 'messages' and 'conversations'; keep one")
    key = "messages" if "messages" in rec else "conversations"
    msgs = expect(rec.get(key), list, field_name(key))

    queues = {}
    for kind, lst in LISTS.items():
        items = expect(rec.get(lst, []), list, field_name(lst))
        queues[kind] = deque(media_part(kind, media.resolve(p, field_name(lst, j))) for j, p in enumerate(items))

    roles, texts, names, weights = [], [], [], []
    system = rec.get("system")
    if system is not None:
        roles.append("system")
        texts.append(expect(system, str, field_name("system")))
        names.append(field_name("system"))
        weights.append(1.0)
    keys = None
    for i, m in enumerate(msgs):
        expect(m, dict, field_name(key, i))
        keys = ("from", "value") if "from" in m else ("role", "content")
        roles.append(map_role(m.get(keys[0]), ROLES, field_name(key, i, keys[0])))
        content = m.get(keys[1])
        if isinstance(content, list):
            raise RecordError(MALFORMED, f"field {field_name(key, i, keys[1])} is a list of content parts; "
                                         "ShareGPT-style content is a string with media tags (use --format openai)")
        texts.append(expect(content, str, field_name(key, i, keys[1])))
        names.append(field_name(key, i))
        weights.append(message_weight(m, field_name(key, i, "weight")))
    check_roles(roles, names)
    check_tag_counts(count_tags(texts, LISTS), {k: len(q) for k, q in queues.items()}, field_name(key),
                     {k: field_name(v) for k, v in LISTS.items()})
    turns = [Turn(role, split_tags(text, queues), w) for role, text, w in zip(roles, texts, weights)]
    check_not_empty(turns, names)
    extra = {k: v for k, v in rec.items() if k not in (key, "system", *LISTS.values())}
    style = {"key": key, "fields": list(keys or ("role", "content")), "system_field": system is not None,
             "lists": [v for v in LISTS.values() if v in rec]}
    return Conversation(turns, {"record": extra, "style": style})


def to_record(conv: Conversation, media: MediaRoot) -> dict:
    """The ShareGPT-style record of a conversation (media by path, relative to the media root)."""
    style = conv.meta.get("style", {})
    rec = dict(conv.meta.get("record") or ({"id": conv.meta["id"]} if "id" in conv.meta else {}))
    key = style.get("key", "messages")
    role_key, text_key = style.get("fields", ("role", "content"))
    names = WRITE_ROLES[(role_key, text_key)]
    found: dict[str, list] = {k: [] for k in LISTS}
    turns = conv.turns
    if style.get("system_field") and turns and turns[0].role == "system":
        rec["system"] = join_tags(turns[0].parts, found, "ShareGPT record, the system turn")
        turns = turns[1:]
    msgs = []
    for i, turn in enumerate(turns):
        msgs.append({role_key: names[turn.role], text_key: join_tags(turn.parts, found, f"ShareGPT record, turn {i}"),
                     **({"weight": turn.weight} if turn.weight != 1 else {})})
    rec[key] = msgs
    for kind, lst in LISTS.items():
        if found[kind] or lst in style.get("lists", ()):
            paths = []
            for j, part in enumerate(found[kind]):
                if part.path is None:
                    raise MMDialogError(f"ShareGPT record: {kind} {j} has no file path; ShareGPT records refer to files")
                paths.append(media.relative(part.path, f"ShareGPT record, {kind} {j}"))
            rec[lst] = paths
    return rec
