"""LLaVA records: a JSON array (or JSON Lines) of

    {"id": "000001", "image": "coco/1.jpg",                # or a list of paths, or absent
     "conversations": [{"from": "human", "value": "<image>\\nWhat is on the table?"},
                       {"from": "gpt", "value": "A cup."}, ...]}

Each `<image>` tag is replaced, where it stands, by the next image of `image`. Roles: human (or
user), gpt (or assistant), system. Other fields (id, ...) are kept in meta["record"] and written back.
"""

from __future__ import annotations

from collections import deque

from mmdialog.data.conversation import Conversation, Turn
from mmdialog.data.formats.common import (
    MediaRoot, check_not_empty, check_roles, check_tag_counts, count_tags, expect, field_name, join_tags,
    map_role, media_part, split_tags,
)
from mmdialog.errors import MMDialogError

NAME = "llava"
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
WRITE_ROLES = {"user": "human", "assistant": "gpt", "system": "system"}


def from_record(rec, media: MediaRoot) -> Conversation:
    expect(rec, dict, "record")
    msgs = expect(rec.get("conversations"), list, field_name("conversations"))
    image = rec.get("image")
    paths = [] if image is None else [image] if isinstance(image, str) else expect(image, list, field_name("image"))
    names = [field_name("image") if isinstance(image, str) else field_name("image", j) for j in range(len(paths))]
    images = deque(media_part("image", media.resolve(p, n)) for p, n in zip(paths, names))

    roles, texts, turn_names = [], [], []
    for i, m in enumerate(msgs):
        expect(m, dict, field_name("conversations", i))
        roles.append(map_role(m.get("from"), ROLES, field_name("conversations", i, "from")))
        texts.append(expect(m.get("value"), str, field_name("conversations", i, "value")))
        turn_names.append(field_name("conversations", i))
    check_roles(roles, turn_names)
    check_tag_counts(count_tags(texts, ["image"]), {"image": len(images)}, field_name("conversations"),
                     {"image": field_name("image")})
    turns = [Turn(role, split_tags(text, {"image": images})) for role, text in zip(roles, texts)]
    check_not_empty(turns, turn_names)
    extra = {k: v for k, v in rec.items() if k not in ("conversations", "image")}
    style = {"image_list": isinstance(image, list)}
    return Conversation(turns, {"record": extra, "style": style})


def to_record(conv: Conversation, media: MediaRoot) -> dict:
    """The LLaVA record of a conversation (images by path, relative to the media root)."""
    rec = dict(conv.meta.get("record") or ({"id": conv.meta["id"]} if "id" in conv.meta else {}))
    found: dict[str, list] = {"image": []}
    msgs = []
    for i, turn in enumerate(conv.turns):
        value = join_tags(turn.parts, found, f"LLaVA record, turn {i}")
        msgs.append({"from": WRITE_ROLES[turn.role], "value": value})
    paths = []
    for j, im in enumerate(found["image"]):
        if im.path is None:
            raise MMDialogError(f"LLaVA record: image {j} has pixels but no file path; LLaVA records refer to files")
        paths.append(media.relative(im.path, f"LLaVA record, image {j}"))
    if len(paths) > 1 or (paths and conv.meta.get("style", {}).get("image_list")):
        rec["image"] = paths
    elif paths:
        rec["image"] = paths[0]
    rec["conversations"] = msgs
    return rec
