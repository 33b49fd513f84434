"""Replay a media dialogue and prove every round right (check.py does this for the picture world).

`check_media_record` checks the record's structure (media_io.validate_media_record), the picture-world
rounds that open a mixed dialogue (check.check_record on them), and then, round by round: the words
(media.question_text), the answer (media.answer_of), that every media item is asked about only once it
was shown, that references resolve ("it" is the previous round's shape, "what about" repeats the
previous question on another shape, "the circle we talked about earlier" fits 2+ shapes of the clip but
one talked about, "that many" is the previous round's count of new media), that pictures are named as
the dialogue shows them ("the picture" while there is one, then "the first" / "the second"), and that
needs, depends_on and distance say exactly which earlier rounds each answer requires.
"""

from __future__ import annotations

from mmdialog.data.worlds.shapes.check import check_record
from mmdialog.data.worlds.shapes.media import (
    IMAGE_OPS, LEADS, ORDINALS, answer_of, family_of, question_text,
)
from mmdialog.data.worlds.shapes.media_io import media_values, validate_media_record
from mmdialog.errors import MMDialogError

CLIP_OPS = ("direction", "speed", "clip_attr")
FAR_FORMS = ({"shape"}, {"size", "shape"}, {"size"})


MEDIA_TYPES = {"beep_count": "audio", "beep_pitch": "audio", "beep_order": "audio", "picture_count": "image",
               "picture_attr": "image", "that_many": "image"}  # the type of media an op asks about (else video)


def check_media_record(record: dict) -> None:
    """Raise MMDialogError naming the dialogue and round at the first thing that is not right."""
    validate_media_record(record)
    replay = _Replay(record)
    for i in range(replay.opening(), len(record["rounds"])):
        replay.check_round(i)


class _Replay:
    """The dialogue state rebuilt round by round: which clip shape each round was about, and what was said."""

    def __init__(self, record: dict):
        self.rid = record["id"]
        self.kind = record["kind"]
        self.media, self.rounds, self.values = record["media"], record["rounds"], media_values(record)
        self.focus: list[tuple[int, int] | None] = []
        self.last: dict[tuple[int, int], int] = {}
        self.known: dict[tuple[int, int], set[str]] = {}
        self.i, self.pics = 0, []  # the round being checked and the pictures shown up to it

    def fail(self, i: int, msg: str):
        raise MMDialogError(f"{self.rid} round {i} ({self.rounds[i]['question']!r}): {msg}")

    def opening(self) -> int:
        """Check how the dialogue opens; the first round the media checks replay (after the picture world's)."""
        media, rounds = self.media, self.rounds
        if self.kind == "mixed":
            if media[0]["type"] != "image" or media[0]["round"] != 0:
                self.fail(0, "a mixed dialogue opens with a picture")
            start = 0
            while start < len(rounds) and rounds[start]["program"]["op"] in IMAGE_OPS:
                start += 1
            check_record({"id": self.rid, "scene": media[0]["scene"], "rounds": rounds[:start]})
            for rd in rounds[:start]:
                if rd["needs"] != ([] if rd["depends_on"] is None else [rd["depends_on"]]):
                    self.fail(rd["round"], f"needs {rd['needs']} is not its depends_on")
            if start < 2:
                self.fail(start, "a mixed dialogue has at least one picture-world round after the caption")
        else:
            if media[0]["type"] != "video" or media[0]["round"] != 0 or rounds[0]["program"]["op"] != "clip_caption":
                self.fail(0, "a motion dialogue opens with a clip and its caption")
            start = 0
        self.focus = [None] * start
        return start

    # -- what the op checkers share (about round self.i)
    def shown_at(self, k: int) -> list[int]:
        """The round that showed media k, when it is an earlier round than i and not round 0."""
        i, s = self.i, self.media[k]["round"]
        if s > i:
            self.fail(i, f"asks about media {k}, which round {s} shows later")
        return [s] if 0 < s < i else []

    def name_of(self, k: int) -> str:
        pics = self.pics
        return "the picture" if len(pics) == 1 else "the first picture" if k == pics[0] else "the second picture"

    def single(self, desc: dict, k: int, target: int, hidden: str | None = None):
        objs = self.values[k].movers if self.media[k]["type"] == "video" else self.values[k].objects
        if [j for j, o in enumerate(objs) if o.matches(desc)] != [target]:
            self.fail(self.i, f"description {desc} does not single out shape {target} of media {k}")
        if hidden is not None and hidden in desc:
            self.fail(self.i, f"description {desc} gives away the asked {hidden}")

    def check_round(self, i: int) -> None:
        media, values = self.media, self.values
        rd, p = self.rounds[i], self.rounds[i]["program"]
        op, ref = p["op"], rd["ref"]
        if op in IMAGE_OPS:
            self.fail(i, "a picture-world question after new media")
        if rd["question"] != question_text(p, ref):
            self.fail(i, f"question should read {question_text(p, ref)!r}")
        if rd["answer"] != answer_of(p, values):
            self.fail(i, f"answer {rd['answer']!r} should be {answer_of(p, values)!r}")
        if rd["scored"] != (op != "clip_caption"):
            self.fail(i, f"scored is {rd['scored']}")
        family = family_of(op)
        if rd["family"] != family:
            self.fail(i, f"family is {rd['family']!r}, should be {family!r}")
        self.i = i
        self.pics = [k for k, m in enumerate(media) if m["type"] == "image" and m["round"] <= i]
        m = p.get("media")
        if isinstance(m, int) and media[m]["type"] != MEDIA_TYPES.get(op, "video"):
            self.fail(i, f"{op} asks about media {m}, a {media[m]['type']}")
        opened = [k for k, x in enumerate(media) if x["round"] == i]
        if p.get("lead") is not None or (opened and i > 0):
            if p.get("lead") != LEADS.get(op) or opened != [m] or rd["needs"] or ref != "none":
                self.fail(i, "a turn that brings new media asks about them at once, with its lead, needing nothing else")
            self.focus.append(None)
            return
        checker = OP_CHECKS.get(op)
        if checker is None:
            self.fail(i, f"unknown op {op!r}")
        target, learned, needs = checker(self, p, m, ref)
        self.settle(rd, op, m, ref, needs, target, learned)

    def settle(self, rd: dict, op: str, m, ref: str, needs, target, learned) -> None:
        """Check the round's needs and ref against what the replay found, and note what it was about."""
        i = self.i
        needs = sorted(set(needs))
        if rd["needs"] != needs:
            self.fail(i, f"needs is {rd['needs']}, should be {needs}")
        want_ref = {"pronoun": "pronoun", "ellipsis": "ellipsis", "far": "far"}.get(ref) or \
            ("count" if op == "that_many" else "media" if needs else "none")
        if ref != want_ref:
            self.fail(i, f"ref is {ref!r}, should be {want_ref!r}")
        if target is not None and op in (*CLIP_OPS, "farthest", "clip_caption"):
            self.focus.append((m, target))
            self.last[(m, target)] = i
            self.known.setdefault((m, target), set()).update(learned)
        else:
            self.focus.append(None)


# ----------------------------------------------------------------------------- the ops, per family
# Each takes (replay, program, media index, ref) and returns (target, learned, needs) of the round.

def _clip_caption(r: _Replay, p: dict, m: int, ref: str):
    if r.i != 0 or not r.values[m].movers[p["target"]].cells:
        r.fail(r.i, "the clip's caption opens the dialogue and names a moving shape")
    r.single(p["desc"], m, p["target"])
    return p["target"], {"colour", "shape", "direction"}, []


def _clip_question(r: _Replay, p: dict, m: int, ref: str):
    """direction, speed, clip_attr: by description, "it", "what about" or "we talked about earlier"."""
    i, op, target, clip, attr = r.i, p["op"], p["target"], r.values[m], p.get("attr")
    learned = {op} if op != "clip_attr" else {attr}
    if op == "speed" and not clip.movers[target].cells:
        r.fail(i, "asks how fast a still shape moves")
    if op == "clip_attr" and ref != "pronoun" and any(x["type"] == "image" for x in r.media[:m] + r.media[m + 1:]
                                                      if x["round"] <= i):
        r.fail(i, "an attribute of a clip shape asked with pictures around (ambiguous)")
    base = r.shown_at(m)
    key = op if op != "clip_attr" else attr
    if ref in ("none", "media"):
        r.single(p["desc"], m, target, attr)
        return target, learned | set(p["desc"]), base
    if ref == "pronoun":
        if r.focus[i - 1] != (m, target):
            r.fail(i, f"'it' is {r.focus[i - 1]}, not shape {target} of media {m}")
        if key in r.known.get((m, target), set()):
            r.fail(i, f"the {key} of 'it' was already given")
        return target, learned, [i - 1, *base]
    if ref == "ellipsis":
        prev = r.rounds[i - 1]["program"]
        if prev["op"] != op or prev.get("attr") != attr or prev["target"] == target or "desc" not in prev:
            r.fail(i, "'what about' does not follow the same question about another shape")
        r.single(p["desc"], m, target, attr)
        return target, learned | set(p["desc"]), [i - 1, *base]
    if ref == "far":
        return target, learned, [_far_reference(r, p, m), *base]
    r.fail(i, f"ref {ref} on a {op}")


def _far_reference(r: _Replay, p: dict, m: int) -> int:
    """The round a far reference reaches back to, once its description is proven to pick out its shape."""
    i, desc, target, clip = r.i, p["desc"], p["target"], r.values[m]
    if set(desc) not in FAR_FORMS or not clip.movers[target].matches(desc):
        r.fail(i, f"far description {desc} is not a far form of shape {target}")
    if len(clip.matching(desc)) < 2:
        r.fail(i, f"far description {desc} is not ambiguous in the clip")
    talked = [o for (k, o) in r.last if k == m and clip.movers[o].matches(desc)]
    if talked != [target]:
        r.fail(i, f"far description {desc} fits shapes {talked} of the dialogue, not just {target}")
    if not set(desc) <= r.known[(m, target)]:
        r.fail(i, f"far description {desc} uses what the dialogue never said")
    if i - r.last[(m, target)] < 2:
        r.fail(i, "far reference to the previous round")
    return r.last[(m, target)]


def _farthest(r: _Replay, p: dict, m: int, ref: str):
    movers = r.values[m].movers
    cells = sorted((x.cells for x in movers), reverse=True)
    if len(cells) > 1 and cells[0] == cells[1]:
        r.fail(r.i, "no single shape moves farthest")
    target = max(range(len(movers)), key=lambda k: movers[k].cells)
    return target, {"colour"}, r.shown_at(m)


def _farther(r: _Replay, p: dict, m: int, ref: str):
    if p["target"] == p["other"]:
        r.fail(r.i, "compares a shape with itself")
    r.single(p["desc"], m, p["target"])
    r.single(p["other_desc"], m, p["other"])
    return None, set(), r.shown_at(m)


def _count(r: _Replay, p: dict, m: int, ref: str):
    """move_count and beep_count: the plain count is the opener's, never asked again."""
    op = p["op"]
    if op == "move_count" and p["direction"] is None and r.media[m]["round"] > 0:
        r.fail(r.i, "asks again the count of moving shapes the clip's turn asked")
    if op == "beep_count" and p["pitch"] is None:
        r.fail(r.i, "asks again the number of beeps the sound's turn asked")
    return None, set(), r.shown_at(m)


def _beep_pitch(r: _Replay, p: dict, m: int, ref: str):
    n = len(r.values[m])
    if not (0 <= p["index"] < min(n, len(ORDINALS)) or (p["index"] == -1 and n > 1)):
        r.fail(r.i, f"beep {p['index']} of {n}")
    return None, set(), r.shown_at(m)


def _beep_order(r: _Replay, p: dict, m: int, ref: str):
    if len(r.values[m]) < 2:
        r.fail(r.i, "orders a single beep")
    return None, set(), r.shown_at(m)


def _picture_question(r: _Replay, p: dict, m: int, ref: str):
    """picture_count and picture_attr: the picture named as the dialogue shows it."""
    if p["picture"] != r.name_of(m):
        r.fail(r.i, f"names media {m} {p['picture']!r}, should be {r.name_of(m)!r}")
    if p["op"] == "picture_attr":
        r.single(p["desc"], m, p["target"], p["attr"])
    return None, set(), r.shown_at(m)


def _compare(r: _Replay, p: dict, m, ref: str):
    """more and both: the two pictures shown so far, in order."""
    pics = r.pics
    if len(pics) != 2 or p["pictures"] != pics:
        r.fail(r.i, f"compares {p['pictures']}, but the pictures shown are {pics}")
    if p["op"] == "more" and not any(r.values[k].matching(p["filter"]) for k in pics):
        r.fail(r.i, "compares counts that are both 0")
    return None, set(), r.shown_at(pics[1])


def _that_many(r: _Replay, p: dict, m: int, ref: str):
    i, prev = r.i, r.rounds[r.i - 1]
    if prev["program"]["op"] not in ("beep_count", "move_count", "picture_count"):
        r.fail(i, "'that many' does not follow a count")
    if p["number"] != int(prev["answer"]):
        r.fail(i, f"'that many' is {p['number']}, the previous answer {prev['answer']}")
    if prev["program"]["op"] == "picture_count" and prev["program"]["media"] == m:
        r.fail(i, "'that many' about the picture that was just counted")
    if p["picture"] != r.name_of(m):
        r.fail(i, f"names media {m} {p['picture']!r}, should be {r.name_of(m)!r}")
    return None, set(), [i - 1, *r.shown_at(m)]


OP_CHECKS = {"clip_caption": _clip_caption, **dict.fromkeys(CLIP_OPS, _clip_question), "farthest": _farthest,
             "farther": _farther, "move_count": _count, "beep_count": _count, "beep_pitch": _beep_pitch,
             "beep_order": _beep_order, "picture_count": _picture_question, "picture_attr": _picture_question,
             "more": _compare, "both": _compare, "that_many": _that_many}
