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


def check_media_record(record: dict) -> None:
    """Raise MMDialogError naming the dialogue and round at the first thing that is not right."""
    validate_media_record(record)
    rid = record["id"]
    media, rounds, values = record["media"], record["rounds"], media_values(record)

    def fail(i: int, msg: str):
        raise MMDialogError(f"{rid} round {i} ({rounds[i]['question']!r}): {msg}")

    if record["kind"] == "mixed":
        if media[0]["type"] != "image" or media[0]["round"] != 0:
            fail(0, "a mixed dialogue opens with a picture")
        start = 0
        while start < len(rounds) and rounds[start]["program"]["op"] in IMAGE_OPS:
            start += 1
        check_record({"id": rid, "scene": media[0]["scene"], "rounds": rounds[:start]})
        for rd in rounds[:start]:
            if rd["needs"] != ([] if rd["depends_on"] is None else [rd["depends_on"]]):
                fail(rd["round"], f"needs {rd['needs']} is not its depends_on")
        if start < 2:
            fail(start, "a mixed dialogue has at least one picture-world round after the caption")
    else:
        if media[0]["type"] != "video" or media[0]["round"] != 0 or rounds[0]["program"]["op"] != "clip_caption":
            fail(0, "a motion dialogue opens with a clip and its caption")
        start = 0
    focus: list[tuple[int, int] | None] = [None] * start
    last: dict[tuple[int, int], int] = {}
    known: dict[tuple[int, int], set[str]] = {}

    for i in range(start, len(rounds)):
        rd, p = rounds[i], rounds[i]["program"]
        op, ref = p["op"], rd["ref"]
        if op in IMAGE_OPS:
            fail(i, "a picture-world question after new media")
        if rd["question"] != question_text(p, ref):
            fail(i, f"question should read {question_text(p, ref)!r}")
        if rd["answer"] != answer_of(p, values):
            fail(i, f"answer {rd['answer']!r} should be {answer_of(p, values)!r}")
        if rd["scored"] != (op != "clip_caption"):
            fail(i, f"scored is {rd['scored']}")
        family = family_of(op)
        if rd["family"] != family:
            fail(i, f"family is {rd['family']!r}, should be {family!r}")
        pics = [k for k, m in enumerate(media) if m["type"] == "image" and m["round"] <= i]

        def shown_at(k: int) -> list[int]:
            """The round that showed media k, when it is an earlier round than i and not round 0."""
            s = media[k]["round"]
            if s > i:
                fail(i, f"asks about media {k}, which round {s} shows later")
            return [s] if 0 < s < i else []

        def name_of(k: int) -> str:
            return "the picture" if len(pics) == 1 else "the first picture" if k == pics[0] else "the second picture"

        def single(desc: dict, k: int, target: int, hidden: str | None = None):
            objs = values[k].movers if media[k]["type"] == "video" else values[k].objects
            if [j for j, o in enumerate(objs) if o.matches(desc)] != [target]:
                fail(i, f"description {desc} does not single out shape {target} of media {k}")
            if hidden is not None and hidden in desc:
                fail(i, f"description {desc} gives away the asked {hidden}")

        m = p.get("media")
        if isinstance(m, int) and media[m]["type"] != {"beep_count": "audio", "beep_pitch": "audio",
                                                       "beep_order": "audio", "picture_count": "image",
                                                       "picture_attr": "image", "that_many": "image"}.get(op, "video"):
            fail(i, f"{op} asks about media {m}, a {media[m]['type']}")
        opened = [k for k, x in enumerate(media) if x["round"] == i]
        if p.get("lead") is not None or (opened and i > 0):
            if p.get("lead") != LEADS.get(op) or opened != [m] or rd["needs"] or ref != "none":
                fail(i, "a turn that brings new media asks about them at once, with its lead, needing nothing else")
            focus.append(None)
            continue

        target, learned, needs = None, set(), None
        if op == "clip_caption":
            if i != 0 or not values[m].movers[p["target"]].cells:
                fail(i, "the clip's caption opens the dialogue and names a moving shape")
            single(p["desc"], m, p["target"])
            target, learned, needs = p["target"], {"colour", "shape", "direction"}, []
        elif op in CLIP_OPS:
            target = p["target"]
            clip = values[m]
            attr = p.get("attr")
            learned = {op} if op != "clip_attr" else {attr}
            if op == "speed" and not clip.movers[target].cells:
                fail(i, "asks how fast a still shape moves")
            if op == "clip_attr" and ref != "pronoun" and any(x["type"] == "image" for x in media[:m] + media[m + 1:]
                                         if x["round"] <= i):
                fail(i, "an attribute of a clip shape asked with pictures around (ambiguous)")
            base = shown_at(m)
            key = op if op != "clip_attr" else attr
            if ref in ("none", "media"):
                single(p["desc"], m, target, attr)
                learned |= set(p["desc"])
                needs = base
            elif ref == "pronoun":
                if focus[i - 1] != (m, target):
                    fail(i, f"'it' is {focus[i - 1]}, not shape {target} of media {m}")
                if key in known.get((m, target), set()):
                    fail(i, f"the {key} of 'it' was already given")
                needs = [i - 1, *base]
            elif ref == "ellipsis":
                prev = rounds[i - 1]["program"]
                if prev["op"] != op or prev.get("attr") != attr or prev["target"] == target or "desc" not in prev:
                    fail(i, "'what about' does not follow the same question about another shape")
                single(p["desc"], m, target, attr)
                learned |= set(p["desc"])
                needs = [i - 1, *base]
            elif ref == "far":
                desc = p["desc"]
                if set(desc) not in FAR_FORMS or not clip.movers[target].matches(desc):
                    fail(i, f"far description {desc} is not a far form of shape {target}")
                if len(clip.matching(desc)) < 2:
                    fail(i, f"far description {desc} is not ambiguous in the clip")
                talked = [o for (k, o) in last if k == m and clip.movers[o].matches(desc)]
                if talked != [target]:
                    fail(i, f"far description {desc} fits shapes {talked} of the dialogue, not just {target}")
                if not set(desc) <= known[(m, target)]:
                    fail(i, f"far description {desc} uses what the dialogue never said")
                if i - last[(m, target)] < 2:
                    fail(i, "far reference to the previous round")
                needs = [last[(m, target)], *base]
            else:
                fail(i, f"ref {ref} on a {op}")
        elif op == "farthest":
            cells = sorted((x.cells for x in values[m].movers), reverse=True)
            if len(cells) > 1 and cells[0] == cells[1]:
                fail(i, "no single shape moves farthest")
            target = max(range(len(values[m].movers)), key=lambda k: values[m].movers[k].cells)
            learned, needs = {"colour"}, shown_at(m)
        elif op == "farther":
            if p["target"] == p["other"]:
                fail(i, "compares a shape with itself")
            single(p["desc"], m, p["target"])
            single(p["other_desc"], m, p["other"])
            needs = shown_at(m)
        elif op in ("move_count", "beep_count"):
            if op == "move_count" and p["direction"] is None and media[m]["round"] > 0:
                fail(i, "asks again the count of moving shapes the clip's turn asked")
            if op == "beep_count" and p["pitch"] is None:
                fail(i, "asks again the number of beeps the sound's turn asked")
            needs = shown_at(m)
        elif op == "beep_pitch":
            n = len(values[m])
            if not (0 <= p["index"] < min(n, len(ORDINALS)) or (p["index"] == -1 and n > 1)):
                fail(i, f"beep {p['index']} of {n}")
            needs = shown_at(m)
        elif op == "beep_order":
            if len(values[m]) < 2:
                fail(i, "orders a single beep")
            needs = shown_at(m)
        elif op in ("picture_count", "picture_attr"):
            if p["picture"] != name_of(m):
                fail(i, f"names media {m} {p['picture']!r}, should be {name_of(m)!r}")
            if op == "picture_attr":
                single(p["desc"], m, p["target"], p["attr"])
            needs = shown_at(m)
        elif op in ("more", "both"):
            if len(pics) != 2 or p["pictures"] != pics:
                fail(i, f"compares {p['pictures']}, but the pictures shown are {pics}")
            if op == "more" and not any(values[k].matching(p["filter"]) for k in pics):
                fail(i, "compares counts that are both 0")
            needs = shown_at(pics[1])
        elif op == "that_many":
            prev = rounds[i - 1]
            if prev["program"]["op"] not in ("beep_count", "move_count", "picture_count"):
                fail(i, "'that many' does not follow a count")
            if p["number"] != int(prev["answer"]):
                fail(i, f"'that many' is {p['number']}, the previous answer {prev['answer']}")
            if prev["program"]["op"] == "picture_count" and prev["program"]["media"] == m:
                fail(i, "'that many' about the picture that was just counted")
            if p["picture"] != name_of(m):
                fail(i, f"names media {m} {p['picture']!r}, should be {name_of(m)!r}")
            needs = [i - 1, *shown_at(m)]
        else:
            fail(i, f"unknown op {op!r}")

        needs = sorted(set(needs))
        if rd["needs"] != needs:
            fail(i, f"needs is {rd['needs']}, should be {needs}")
        want_ref = {"pronoun": "pronoun", "ellipsis": "ellipsis", "far": "far"}.get(ref) or \
            ("count" if op == "that_many" else "media" if needs else "none")
        if ref != want_ref:
            fail(i, f"ref is {ref!r}, should be {want_ref!r}")
        if target is not None and op in (*CLIP_OPS, "farthest", "clip_caption"):
            focus.append((m, target))
            last[(m, target)] = i
            known.setdefault((m, target), set()).update(learned)
        else:
            focus.append(None)
