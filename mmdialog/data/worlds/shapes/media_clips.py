"""Clips where shapes move: the caption that opens a motion dialogue, the clip a later turn brings ("Now
watch this clip: how many shapes move?"), and the questions on which way, how fast and how far shapes
move, with pronouns, ellipsis and far references ("the circle we talked about earlier")."""

from __future__ import annotations

from mmdialog.data.worlds.shapes.media import CLIP_ATTRIBUTES, LEADS, unique_descs
from mmdialog.data.worlds.shapes.media_state import DialogueState
from mmdialog.data.worlds.shapes.motion import Clip, sample_clip

# Relative weights of the follow-up templates among the feasible ones (as dialogue.TEMPLATE_WEIGHTS).
MOTION_WEIGHTS = {"move_count": 0.6, "direction": 1.0, "speed": 0.7, "farthest": 0.5, "farther": 0.6,
                  "clip_attr": 0.5, "pronoun": 1.5, "ellipsis": 1.2, "far": 3.0}


def clip_desc(clip: Clip, o: int) -> dict:
    """Colour and shape: colours are distinct in a clip, so this always singles the shape out."""
    return {"colour": clip.movers[o].colour, "shape": clip.movers[o].shape}


def ask_about_shape(s: DialogueState, op: str, o: int, ref: str, needs, attr: str | None = None,
                    desc: dict | None = None, allow_repeat: bool = False) -> bool:
    """A question (direction, speed or clip_attr) on shape o of the clip; False where a still shape's speed."""
    m = s.first("video")
    clip = s.media[m]["value"]
    if op == "speed" and clip.movers[o].cells == 0:
        return False
    program = {"op": op, "media": m, "target": o}
    if desc is not None:
        program["desc"] = desc
    if attr is not None:
        program["attr"] = attr
    learned = {"direction": ("direction",), "speed": ("speed",)}.get(op, (attr,))
    return s.add(program, ref, needs, focus=(m, o), learned=(*learned, *(desc or {})), allow_repeat=allow_repeat)


class ClipQuestions:
    """The clip and the questions asked on it by description; the references to its shapes are ClipReferences."""

    def __init__(self, state: DialogueState):
        self.s = state
        self.refs = ClipReferences(state)
        own = ("move_count", "direction", "speed", "clip_attr", "farthest", "farther")
        self.templates = {**{t: getattr(self, f"t_{t}") for t in own}, **self.refs.templates}

    def caption(self, clip: Clip) -> None:
        """Round 0 of a motion dialogue: the clip, and a caption naming a shape that moves."""
        s = self.s
        m = s.show("video", clip, 0)
        o = s.d.choice([k for k, x in enumerate(clip.movers) if x.cells > 0])
        desc = clip_desc(clip, o)
        s.add({"op": "clip_caption", "media": m, "target": o, "desc": desc}, "none", [], shown=[m],
              focus=(m, o), learned=("colour", "shape", "direction"), scored=False)

    def open(self, i: int) -> None:
        s = self.s
        m = s.show("video", sample_clip(s.d, s.size, exclude_pairs=s.exclude), i)
        s.add({"op": "move_count", "media": m, "direction": None, "lead": LEADS["move_count"]}, "none", [],
              shown=[m])

    def fallback(self, i: int) -> None:
        """Always possible: which way a shape moves, asked again if need be."""
        s = self.s
        m = s.first("video")
        clip = s.media[m]["value"]
        o = s.d.below(len(clip.movers))
        ask_about_shape(s, "direction", o, "none", [], desc=clip_desc(clip, o), allow_repeat=True)

    def t_move_count(self, i: int) -> bool:
        s = self.s
        m = s.first("video")
        d = s.d.choice((None, "left", "right", "up", "down", "nowhere"))
        if d is None and s.round_of(m) > 0:
            return False  # the clip's opener asked it
        return s.add({"op": "move_count", "media": m, "direction": d}, s.ref(m, i), s.media_needs(m, i))

    def t_direction(self, i: int) -> bool:
        s = self.s
        m = s.first("video")
        o = s.d.below(len(s.media[m]["value"].movers))
        return ask_about_shape(s, "direction", o, s.ref(m, i), s.media_needs(m, i),
                               desc=clip_desc(s.media[m]["value"], o))

    def t_speed(self, i: int) -> bool:
        s = self.s
        m = s.first("video")
        clip = s.media[m]["value"]
        moving = [k for k, x in enumerate(clip.movers) if x.cells > 0]
        o = s.d.choice(moving)
        return ask_about_shape(s, "speed", o, s.ref(m, i), s.media_needs(m, i), desc=clip_desc(clip, o))

    def t_clip_attr(self, i: int) -> bool:
        """Only in motion dialogues: with pictures around, "What shape is the red thing?" would be ambiguous."""
        s = self.s
        m = s.first("video")
        if any(x["type"] == "image" for x in s.media):
            return False
        clip = s.media[m]["value"]
        o, attr = s.d.below(len(clip.movers)), s.d.choice(CLIP_ATTRIBUTES)
        descs = unique_descs(clip.movers, o, attr, CLIP_ATTRIBUTES)
        if not descs:
            return False
        return ask_about_shape(s, "clip_attr", o, s.ref(m, i), s.media_needs(m, i), attr=attr,
                               desc=s.d.choice(descs))

    def t_farthest(self, i: int) -> bool:
        s = self.s
        m = s.first("video")
        clip = s.media[m]["value"]
        cells = sorted((x.cells for x in clip.movers), reverse=True)
        if len(cells) > 1 and cells[0] == cells[1]:
            return False  # no single farthest shape
        o = max(range(len(clip.movers)), key=lambda k: clip.movers[k].cells)
        return s.add({"op": "farthest", "media": m}, s.ref(m, i), s.media_needs(m, i), focus=(m, o),
                     learned=("colour",))

    def t_farther(self, i: int) -> bool:
        s = self.s
        m = s.first("video")
        clip = s.media[m]["value"]
        a, b = s.d.sample(range(len(clip.movers)), 2)
        program = {"op": "farther", "media": m, "target": a, "desc": clip_desc(clip, a), "other": b,
                   "other_desc": clip_desc(clip, b)}
        return s.add(program, s.ref(m, i), s.media_needs(m, i))


class ClipReferences:
    """ "Which way does it move?", "What about the blue square?", "the circle we talked about earlier"."""

    def __init__(self, state: DialogueState):
        self.s = state
        self.templates = {"pronoun": self.t_pronoun, "ellipsis": self.t_ellipsis, "far": self.t_far}

    def t_pronoun(self, i: int) -> bool:
        s = self.s
        p = s.focus[i - 1]
        if p is None:
            return False
        m, o = p
        mover = s.media[m]["value"].movers[o]
        options = [op for op in ("direction", "speed") if op not in s.known[p] and (op != "speed" or mover.cells)]
        options += [("clip_attr", a) for a in CLIP_ATTRIBUTES if a not in s.known[p]]
        if not options:
            return False
        choice = s.d.choice(options)
        op, attr = choice if isinstance(choice, tuple) else (choice, None)
        return ask_about_shape(s, op, o, "pronoun", [i - 1, *s.media_needs(m, i)], attr=attr)

    def t_ellipsis(self, i: int) -> bool:
        s = self.s
        prev = s.records[i - 1]["program"]
        if prev["op"] not in ("direction", "speed", "clip_attr") or "desc" not in prev:
            return False
        m = prev["media"]
        clip = s.media[m]["value"]
        others = [k for k in range(len(clip.movers)) if k != prev["target"]
                  and (prev["op"] != "speed" or clip.movers[k].cells)]
        if not others:
            return False
        o = s.d.choice(others)
        if prev["op"] == "clip_attr":
            descs = unique_descs(clip.movers, o, prev["attr"], CLIP_ATTRIBUTES)
            if not descs:
                return False
            desc = s.d.choice(descs)
        else:
            desc = clip_desc(clip, o)
        return ask_about_shape(s, prev["op"], o, "ellipsis", [i - 1, *s.media_needs(m, i)],
                               attr=prev.get("attr"), desc=desc)

    def t_far(self, i: int) -> bool:
        """ "Which way does the circle we talked about earlier move?": the description fits two shapes or
        more in the clip but only one shape the dialogue was about, last mentioned 2+ rounds back."""
        s = self.s
        m = s.first("video")
        if m is None:
            return False
        clip = s.media[m]["value"]
        fresh, stale = [], []  # asking what the dialogue has not said yet / has said
        for (mm, o), seen in s.last.items():
            if mm != m or seen > i - 2:
                continue
            for form in (("shape",), ("size", "shape"), ("size",)):
                if not all(a in s.known[(m, o)] for a in form):
                    continue
                desc = {a: clip.movers[o].get(a) for a in form}
                fits = clip.matching(desc)
                if len(fits) < 2 or sum((m, k) in s.last for k in fits) != 1:
                    continue
                for op in ("direction", "speed"):
                    if (m, o, op) not in s.far_asked and (op != "speed" or clip.movers[o].cells):
                        (stale if op in s.known[(m, o)] else fresh).append((op, o, desc, seen))
        if not (fresh or stale):
            return False
        op, o, desc, seen = s.d.choice(fresh or stale)
        s.far_asked.add((m, o, op))
        return ask_about_shape(s, op, o, "far", [seen, *s.media_needs(m, i)], desc=desc)
