"""The right answers of a dialogue as it happened, when the model's own caption named another object.

Round 0 describes one object of the picture, and the world picks it at random ("There are 3 shapes. One is
a large yellow circle."): any object of the picture is a right caption. Later rounds may refer back to it
("What size is the circle we talked about earlier?", "What colour is it?"). In a real chat (the own-history
evaluation) the model's own caption stays in the history, and when it described another object correctly
(a small green circle), "the circle we talked about earlier" is the small green one: the scripted answer,
about the object the world's caption named, is not the right answer to the conversation the model had.

`golds_as_said` gives every round the answer that is right in the conversation as it happened: the
scripted one, except for the rounds that refer back to the caption's object (through the chain of
`depends_on`) when the model's caption names exactly one other object of the picture and the question's
own words fit that object (and no other object the conversation has talked about; "it" follows the round
it refers to). A caption that names nothing real, or an object the question's words do not fit, changes
nothing: its error counts.
"""

from __future__ import annotations

import re

from mmdialog.data.worlds.shapes.dialogue import answer_of
from mmdialog.data.worlds.shapes.scene import COLOURS, POSITIONS, SHAPES, SIZES, Scene

_CAPTION = re.compile(r"there are (\d+) shapes\.(?: one is an? (.+?)\.)?")
_PHRASE = re.compile(rf"(?:({'|'.join(SIZES)}) )?(?:({'|'.join(COLOURS)}) )?({'|'.join(SHAPES)}|thing)"
                     rf"(?: at the ({'|'.join(POSITIONS)}))?")


def parse_caption(text: str) -> dict[str, str] | None:
    """The description in a caption ("There are 3 shapes. One is a small green circle." ->
    {"size": "small", "colour": "green", "shape": "circle"}), {} when it only counts, None when it is not a
    caption in the world's words."""
    m = _CAPTION.fullmatch(" ".join(text.lower().split()))
    if not m:
        return None
    if m.group(2) is None:
        return {}
    p = _PHRASE.fullmatch(m.group(2))
    if not p:
        return None
    size, colour, shape, position = p.groups()
    desc = {"size": size, "colour": colour, "shape": None if shape == "thing" else shape, "position": position}
    return {k: v for k, v in desc.items() if v is not None}


def _chain(rounds: list[dict], r: int) -> set[int]:
    """The rounds round r depends on, directly or through others."""
    seen: set[int] = set()
    k = rounds[r].get("depends_on")
    while k is not None and k not in seen:
        seen.add(k)
        k = rounds[k].get("depends_on")
    return seen


def _spoken(rd: dict) -> dict[str, str] | None:
    """The description the question itself says ({} for "it"), None for references this module leaves
    alone (names, counts, ...)."""
    program, ref = rd.get("program") or {}, rd.get("ref")
    if program.get("op") != "query":
        return None
    if ref == "pronoun":
        return {}
    if ref in ("far", "none", "ellipsis"):
        return dict(program.get("desc") or {})
    return None


def golds_as_said(record: dict, replies: list[str]) -> list[str]:
    """Per round of a world record, the right answer given the model's own replies in the history (see the
    module docstring); the scripted answers when the record has no scene or caption to re-read."""
    rounds = record["rounds"]
    golds = [rd["answer"] for rd in rounds]
    first = (rounds[0].get("program") or {}) if rounds else {}
    if "scene" not in record or first.get("op") != "caption" or first.get("target") is None or not replies:
        return golds
    desc = parse_caption(replies[0])
    if not desc:
        return golds
    scene = Scene.from_dict(record["scene"])
    said = scene.matching(desc)
    t = first["target"]
    if len(said) != 1 or said[0] == t:
        return golds
    o = said[0]
    moved = {0}  # the rounds now about o instead of t
    talked = {o}  # the objects the conversation as it happened has been about
    for r in range(1, len(rounds)):
        rd, program = rounds[r], rounds[r].get("program") or {}
        from_caption = program.get("target") == t and 0 in _chain(rounds, r)
        spoken = _spoken(rd) if from_caption and rd.get("depends_on") in moved else None
        if spoken is not None and scene.objects[o].matches(spoken) and \
                (not spoken or sum(scene.objects[p].matches(spoken) for p in talked) == 1):
            golds[r] = answer_of({**program, "target": o}, scene, {})
            moved.add(r)
        elif program.get("target") is not None and not from_caption:
            talked.add(program["target"])
    return golds
