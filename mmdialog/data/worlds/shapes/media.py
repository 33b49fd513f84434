"""Dialogues across media: clips where shapes move, beeps, and pictures shown in later turns.

Two kinds of dialogue (the file format is in docs/world.md, "Media dialogues"):

- motion: a clip opens the dialogue ("Describe the clip."), then questions on which way each shape moves,
  how fast, which moves farthest, how many move, pronouns ("Which way does it move?"), ellipsis ("What
  about the blue square?") and far references ("the circle we talked about earlier").
- mixed: a picture opens it, with 1-3 rounds of the picture world's questions (dialogue.py), then one or
  two later turns bring new media: a second picture ("Now look at this picture: ..."), beeps ("Now
  listen: how many beeps are there?") or a clip ("Now watch this clip: how many shapes move?"). Later
  rounds ask about them, compare the two pictures ("Which picture has more circles: the first or the
  second?") and cross media ("Are there that many circles in the first picture?" after a count).

Dependencies follow the picture world: the media of round 0 open the context and are always there (as
the picture is), so a question they answer has no dependency. Media shown in a later round are history
like its words. Each round lists in `needs` every earlier round it cannot be answered without;
`depends_on` is the earliest of them (how far back the history must reach) and `distance` is
round - depends_on (0 with no need).

Every round keeps its `program`; `question_text` and `answer_of` rebuild the words from it, and
media_check.check_media_record replays the programs to prove each round right.
"""

from __future__ import annotations

from itertools import combinations

from mmdialog.data.worlds.shapes.beeps import sample_beeps
from mmdialog.data.worlds.shapes.dialogue import COUNT_ATTRIBUTES, generate_dialogue, phrase, plural
from mmdialog.data.worlds.shapes.motion import SPEED_WORDS, Clip, sample_clip
from mmdialog.data.worlds.shapes.scene import ATTRIBUTES, VALUES, Draws, Scene, sample_scene

KINDS = ("mixed", "motion")
MODALITIES = ("image", "audio", "video")
SEGMENTS = {"image": "picture", "audio": "beeps", "video": "clip"}  # what a later turn can bring, per modality
FAMILIES = ("caption", "statement", "chat", "count", "exist", "attribute", "memory", "motion", "beeps", "compare", "cross")
REFS = ("none", "pronoun", "ellipsis", "group", "far", "name", "memory", "media", "count")
IMAGE_OPS = ("caption", "count", "exist", "query", "name", "recall", "chat")  # the picture world's programs (dialogue.py)

CLIP_CAPTION = "Describe the clip."
LEADS = {"beep_count": "Now listen", "move_count": "Now watch this clip", "picture_count": "Now look at this picture"}
ORDINALS = ("first", "second", "third", "fourth", "fifth")
CLIP_ATTRIBUTES = ("shape", "colour", "size")
MORE_ANSWERS = ("the first", "the second", "neither")

# Relative weights of the follow-up templates among the feasible ones (as dialogue.TEMPLATE_WEIGHTS).
MOTION_WEIGHTS = {"move_count": 0.6, "direction": 1.0, "speed": 0.7, "farthest": 0.5, "farther": 0.6,
                  "clip_attr": 0.5, "pronoun": 1.5, "ellipsis": 1.2, "far": 3.0}
BEEP_WEIGHTS = {"beep_count": 1.0, "beep_pitch": 1.0, "beep_order": 0.6}
PICTURE_WEIGHTS = {"more": 1.0, "both": 0.8, "picture_count": 0.8, "picture_attr": 0.8}
CROSS_WEIGHT = 3.0  # "that many": only right after a count of new media, so it gets a large weight


# ----------------------------------------------------------------------------- words and answers

def _things(f: dict) -> str:
    return plural(f) if f else "shapes"


def question_text(program: dict, ref: str) -> str:
    """The words of a round of a media dialogue (not of the picture world's rounds: dialogue.question_text)."""
    op = program["op"]
    if op == "clip_caption":
        return CLIP_CAPTION
    if op == "move_count":
        d = program["direction"]
        q = "How many shapes move?" if d is None else \
            "How many shapes stay still?" if d == "nowhere" else f"How many shapes move {d}?"
    elif op == "beep_count":
        p = program["pitch"]
        q = f"How many {p + ' ' if p else ''}beeps are there?"
    elif op == "picture_count":
        if program.get("lead"):
            q = f"How many {_things(program['filter'])} are there?"
        else:
            q = f"How many {_things(program['filter'])} are in {program['picture']}?"
    elif op in ("direction", "speed", "clip_attr"):
        if ref == "ellipsis":
            return f"What about the {phrase(program['desc'])}?"
        subject = "it" if ref == "pronoun" else f"the {phrase(program['desc'])}" + \
            (" we talked about earlier" if ref == "far" else "")
        if op == "direction":
            return f"Which way does {subject} move?"
        if op == "speed":
            return f"Does {subject} move fast or slowly?"
        return f"What {program['attr']} is {subject}?"
    elif op == "farthest":
        return "What colour is the shape that moves farthest?"
    elif op == "farther":
        return f"Does the {phrase(program['desc'])} move farther than the {phrase(program['other_desc'])}?"
    elif op == "beep_pitch":
        k = program["index"]
        return f"Is the {'last' if k == -1 else ORDINALS[k]} beep high or low?"
    elif op == "beep_order":
        return f"Is the last beep {program['relation']} than the first?"
    elif op == "more":
        return f"Which picture has more {_things(program['filter'])}: the first or the second?"
    elif op == "both":
        return f"Is there a {phrase(program['filter'])} in both pictures?"
    elif op == "picture_attr":
        attr, where = program["attr"], program["picture"]
        subject = f"the {phrase(program['desc'])} in {where}"
        return f"Where is {subject}?" if attr == "position" else f"What {attr} is {subject}?"
    elif op == "that_many":
        return f"Are there that many {_things(program['filter'])} in {program['picture']}?"
    else:
        raise ValueError(f"unknown program op {op!r}")
    lead = program.get("lead")
    return f"{lead}: {q[0].lower()}{q[1:]}" if lead else q


def answer_of(program: dict, media: list) -> str:
    """The right answer of a media round; media[i] is the Scene, Beeps or Clip of record["media"][i]."""
    op = program["op"]
    m = media[program["media"]] if isinstance(program.get("media"), int) else None
    if op == "clip_caption":
        o = m.movers[program["target"]]
        return f"There are {len(m.movers)} shapes. The {phrase(program['desc'])} moves {o.direction}."
    if op == "move_count":
        d = program["direction"]
        return str(sum(o.cells > 0 if d is None else o.direction == d for o in m.movers))
    if op == "direction":
        return m.movers[program["target"]].direction
    if op == "speed":
        return SPEED_WORDS[m.movers[program["target"]].speed]
    if op == "clip_attr":
        return m.movers[program["target"]].get(program["attr"])
    if op == "farthest":
        return max(m.movers, key=lambda o: o.cells).colour
    if op == "farther":
        return "yes" if m.movers[program["target"]].cells > m.movers[program["other"]].cells else "no"
    if op == "beep_count":
        p = program["pitch"]
        return str(sum(p is None or x == p for x in m.pitches))
    if op == "beep_pitch":
        return m.pitches[program["index"]]
    if op == "beep_order":
        first, last = m.pitches[0], m.pitches[-1]
        want = ("low", "high") if program["relation"] == "higher" else ("high", "low")
        return "yes" if (first, last) == want else "no"
    if op == "picture_count":
        return str(len(m.matching(program["filter"])))
    if op == "more":
        a, b = (len(media[i].matching(program["filter"])) for i in program["pictures"])
        return MORE_ANSWERS[0] if a > b else MORE_ANSWERS[1] if b > a else MORE_ANSWERS[2]
    if op == "both":
        return "yes" if all(media[i].matching(program["filter"]) for i in program["pictures"]) else "no"
    if op == "picture_attr":
        return m.objects[program["target"]].get(program["attr"])
    if op == "that_many":
        return "yes" if len(m.matching(program["filter"])) == program["number"] else "no"
    raise ValueError(f"unknown program op {op!r}")


def family_of(op: str) -> str:
    if op == "clip_caption":
        return "caption"
    if op in ("move_count", "direction", "speed", "farthest", "farther"):
        return "motion"
    if op in ("beep_count", "beep_pitch", "beep_order"):
        return "beeps"
    if op in ("clip_attr", "picture_attr"):
        return "attribute"
    if op == "picture_count":
        return "count"
    if op in ("more", "both"):
        return "compare"
    if op == "that_many":
        return "cross"
    raise ValueError(f"unknown program op {op!r}")


def unique_descs(objs, o: int, exclude: str | None, attrs=ATTRIBUTES) -> list[dict]:
    """The shortest descriptions (attribute subsets of `attrs`, without `exclude`) that single out objs[o]."""
    for k in range(1, len(attrs) + 1):
        found = []
        for s in combinations(attrs, k):
            if exclude in s:
                continue
            desc = {a: objs[o].get(a) for a in s}
            if [i for i, x in enumerate(objs) if x.matches(desc)] == [o]:
                found.append(desc)
        if found:
            return found
    return []


def all_filters(k_max: int = 2) -> list[dict]:
    """Every count filter of 1..k_max attributes of COUNT_ATTRIBUTES (colour, size, shape), in a fixed order."""
    out = []
    for k in range(1, k_max + 1):
        for attrs in combinations(COUNT_ATTRIBUTES, k):
            combos = [{}]
            for a in attrs:
                combos = [{**c, a: v} for c in combos for v in VALUES[a]]
            out.extend(combos)
    return out


FILTERS = all_filters()


# ----------------------------------------------------------------------------- generator

class _MediaDialogue:
    def __init__(self, draws: Draws, image_size: int, rounds: int, exclude_pairs=None):
        self.d, self.size, self.rounds, self.exclude = draws, image_size, rounds, exclude_pairs
        self.media: list[dict] = []  # {"type", "round", "value": Scene | Beeps | Clip}
        self.records: list[dict] = []
        self.focus: list[tuple[int, int] | None] = []  # (media index, object index) of clip objects
        self.last: dict[tuple[int, int], int] = {}
        self.known: dict[tuple[int, int], set[str]] = {}
        self.asked: set[str] = set()
        self.far_asked: set[tuple[int, int, str]] = set()

    # -- helpers
    def _values(self) -> list:
        return [m["value"] for m in self.media]

    def _show(self, kind: str, value, i: int) -> int:
        self.media.append({"type": kind, "round": i, "value": value})
        return len(self.media) - 1

    def _round_of(self, m: int) -> int:
        return self.media[m]["round"]

    def _media_needs(self, m: int, i: int) -> list[int]:
        """An earlier round that showed media m (none for round 0's media, always in the context)."""
        s = self._round_of(m)
        return [s] if 0 < s < i else []

    def _pictures(self) -> list[int]:
        return [k for k, m in enumerate(self.media) if m["type"] == "image"]

    def _picture_name(self, m: int) -> str:
        pics = self._pictures()
        if len(pics) == 1:
            return "the picture"
        return "the first picture" if m == pics[0] else "the second picture"

    def _add(self, program: dict, ref: str, needs, *, shown=(), focus=None, learned=(), scored=True,
             allow_repeat: bool = False) -> bool:
        i = len(self.records)
        q = question_text(program, ref)
        if scored and not allow_repeat and q in self.asked:
            return False
        needs = sorted(set(needs))
        dep = needs[0] if needs else None
        self.records.append({
            "round": i, "question": q, "answer": answer_of(program, self._values()),
            "family": family_of(program["op"]), "ref": ref, "depends_on": dep,
            "distance": 0 if dep is None else i - dep, "needs": needs, "scored": scored, "program": program,
            "media": list(shown),
        })
        self.asked.add(q)
        self.focus.append(focus)
        if focus is not None:
            self.last[focus] = i
            self.known.setdefault(focus, set()).update(learned)
        return True

    # -- openers: a later turn brings new media, asked about at once (distance 0)
    def open_picture(self, i: int) -> None:
        scene = sample_scene(self.d, self.size, exclude_pairs=self.exclude)
        m = self._show("image", scene, i)
        f = {} if self.d.random() < 0.4 else self._object_filter(scene, 1)
        self._add({"op": "picture_count", "media": m, "filter": f, "lead": LEADS["picture_count"]}, "none", [],
                  shown=[m])

    def open_beeps(self, i: int) -> None:
        m = self._show("audio", sample_beeps(self.d), i)
        self._add({"op": "beep_count", "media": m, "pitch": None, "lead": LEADS["beep_count"]}, "none", [], shown=[m])

    def open_clip(self, i: int) -> None:
        m = self._show("video", sample_clip(self.d, self.size, exclude_pairs=self.exclude), i)
        self._add({"op": "move_count", "media": m, "direction": None, "lead": LEADS["move_count"]}, "none", [],
                  shown=[m])

    def _object_filter(self, scene: Scene, k: int) -> dict:
        base = self.d.choice(scene.objects)
        return {a: base.get(a) for a in self.d.sample(COUNT_ATTRIBUTES, k)}

    # -- the clip
    def _clip(self) -> int | None:
        clips = [k for k, m in enumerate(self.media) if m["type"] == "video"]
        return clips[0] if clips else None

    def _clip_desc(self, clip: Clip, o: int) -> dict:
        """Colour and shape: colours are distinct in a clip, so this always singles the shape out."""
        return {"colour": clip.movers[o].colour, "shape": clip.movers[o].shape}

    def clip_caption(self, clip: Clip) -> None:
        m = self._show("video", clip, 0)
        o = self.d.choice([k for k, x in enumerate(clip.movers) if x.cells > 0])
        desc = self._clip_desc(clip, o)
        self._add({"op": "clip_caption", "media": m, "target": o, "desc": desc}, "none", [], shown=[m],
                  focus=(m, o), learned=("colour", "shape", "direction"), scored=False)

    def t_move_count(self, i: int) -> bool:
        m = self._clip()
        d = self.d.choice((None, "left", "right", "up", "down", "nowhere"))
        if d is None and self._round_of(m) > 0:
            return False  # the clip's opener asked it
        return self._add({"op": "move_count", "media": m, "direction": d}, self._ref(m, i), self._media_needs(m, i))

    def _ref(self, m: int, i: int) -> str:
        return "media" if self._media_needs(m, i) else "none"

    def _ask_object(self, op: str, i: int, o: int, ref: str, needs, attr: str | None = None,
                    desc: dict | None = None, allow_repeat: bool = False) -> bool:
        m = self._clip()
        clip = self.media[m]["value"]
        if op == "speed" and clip.movers[o].cells == 0:
            return False
        program = {"op": op, "media": m, "target": o}
        if desc is not None:
            program["desc"] = desc
        if attr is not None:
            program["attr"] = attr
        learned = {"direction": ("direction",), "speed": ("speed",)}.get(op, (attr,))
        return self._add(program, ref, needs, focus=(m, o), learned=(*learned, *(desc or {})),
                         allow_repeat=allow_repeat)

    def t_direction(self, i: int) -> bool:
        m = self._clip()
        o = self.d.below(len(self.media[m]["value"].movers))
        return self._ask_object("direction", i, o, self._ref(m, i), self._media_needs(m, i),
                                desc=self._clip_desc(self.media[m]["value"], o))

    def t_speed(self, i: int) -> bool:
        m = self._clip()
        clip = self.media[m]["value"]
        moving = [k for k, x in enumerate(clip.movers) if x.cells > 0]
        o = self.d.choice(moving)
        return self._ask_object("speed", i, o, self._ref(m, i), self._media_needs(m, i), desc=self._clip_desc(clip, o))

    def t_clip_attr(self, i: int) -> bool:
        """Only in motion dialogues: with pictures around, "What shape is the red thing?" would be ambiguous."""
        m = self._clip()
        if any(x["type"] == "image" for x in self.media):
            return False
        clip = self.media[m]["value"]
        o, attr = self.d.below(len(clip.movers)), self.d.choice(CLIP_ATTRIBUTES)
        descs = unique_descs(clip.movers, o, attr, CLIP_ATTRIBUTES)
        if not descs:
            return False
        return self._ask_object("clip_attr", i, o, self._ref(m, i), self._media_needs(m, i), attr=attr,
                                desc=self.d.choice(descs))

    def t_farthest(self, i: int) -> bool:
        m = self._clip()
        clip = self.media[m]["value"]
        cells = sorted((x.cells for x in clip.movers), reverse=True)
        if len(cells) > 1 and cells[0] == cells[1]:
            return False  # no single farthest shape
        o = max(range(len(clip.movers)), key=lambda k: clip.movers[k].cells)
        return self._add({"op": "farthest", "media": m}, self._ref(m, i), self._media_needs(m, i), focus=(m, o),
                         learned=("colour",))

    def t_farther(self, i: int) -> bool:
        m = self._clip()
        clip = self.media[m]["value"]
        a, b = self.d.sample(range(len(clip.movers)), 2)
        program = {"op": "farther", "media": m, "target": a, "desc": self._clip_desc(clip, a), "other": b,
                   "other_desc": self._clip_desc(clip, b)}
        return self._add(program, self._ref(m, i), self._media_needs(m, i))

    def t_pronoun(self, i: int) -> bool:
        p = self.focus[i - 1]
        if p is None:
            return False
        m, o = p
        mover = self.media[m]["value"].movers[o]
        options = [op for op in ("direction", "speed") if op not in self.known[p] and (op != "speed" or mover.cells)]
        options += [("clip_attr", a) for a in CLIP_ATTRIBUTES if a not in self.known[p]]
        if not options:
            return False
        choice = self.d.choice(options)
        op, attr = choice if isinstance(choice, tuple) else (choice, None)
        return self._ask_object(op, i, o, "pronoun", [i - 1, *self._media_needs(m, i)], attr=attr)

    def t_ellipsis(self, i: int) -> bool:
        prev = self.records[i - 1]["program"]
        if prev["op"] not in ("direction", "speed", "clip_attr") or "desc" not in prev:
            return False
        m = prev["media"]
        clip = self.media[m]["value"]
        others = [k for k in range(len(clip.movers)) if k != prev["target"]
                  and (prev["op"] != "speed" or clip.movers[k].cells)]
        if not others:
            return False
        o = self.d.choice(others)
        if prev["op"] == "clip_attr":
            descs = unique_descs(clip.movers, o, prev["attr"], CLIP_ATTRIBUTES)
            if not descs:
                return False
            desc = self.d.choice(descs)
        else:
            desc = self._clip_desc(clip, o)
        return self._ask_object(prev["op"], i, o, "ellipsis", [i - 1, *self._media_needs(m, i)],
                                attr=prev.get("attr"), desc=desc)

    def t_far(self, i: int) -> bool:
        """ "Which way does the circle we talked about earlier move?": the description fits two shapes or
        more in the clip but only one shape the dialogue was about, last mentioned 2+ rounds back."""
        m = self._clip()
        if m is None:
            return False
        clip = self.media[m]["value"]
        fresh, stale = [], []  # asking what the dialogue has not said yet / has said
        for (mm, o), seen in self.last.items():
            if mm != m or seen > i - 2:
                continue
            for form in (("shape",), ("size", "shape"), ("size",)):
                if not all(a in self.known[(m, o)] for a in form):
                    continue
                desc = {a: clip.movers[o].get(a) for a in form}
                fits = clip.matching(desc)
                if len(fits) < 2 or sum((m, k) in self.last for k in fits) != 1:
                    continue
                for op in ("direction", "speed"):
                    if (m, o, op) not in self.far_asked and (op != "speed" or clip.movers[o].cells):
                        (stale if op in self.known[(m, o)] else fresh).append((op, o, desc, seen))
        if not (fresh or stale):
            return False
        op, o, desc, seen = self.d.choice(fresh or stale)
        self.far_asked.add((m, o, op))
        return self._ask_object(op, i, o, "far", [seen, *self._media_needs(m, i)], desc=desc)

    # -- the beeps
    def _beeps(self) -> int | None:
        found = [k for k, m in enumerate(self.media) if m["type"] == "audio"]
        return found[0] if found else None

    def t_beep_count(self, i: int) -> bool:
        m = self._beeps()
        p = self.d.choice(("high", "low"))
        return self._add({"op": "beep_count", "media": m, "pitch": p}, self._ref(m, i), self._media_needs(m, i))

    def t_beep_pitch(self, i: int) -> bool:
        m = self._beeps()
        n = len(self.media[m]["value"])
        k = self.d.choice(list(range(n)) + ([-1] if n > 1 else []))
        return self._add({"op": "beep_pitch", "media": m, "index": k}, self._ref(m, i), self._media_needs(m, i))

    def t_beep_order(self, i: int) -> bool:
        m = self._beeps()
        if len(self.media[m]["value"]) < 2:
            return False
        program = {"op": "beep_order", "media": m, "relation": self.d.choice(("higher", "lower"))}
        return self._add(program, self._ref(m, i), self._media_needs(m, i))

    # -- two pictures
    def _second(self) -> int | None:
        pics = self._pictures()
        return pics[1] if len(pics) > 1 else None

    def _balanced(self, classes: dict[str, list[dict]]) -> dict | None:
        """A filter from a class drawn uniformly among the non-empty ones (so answers are balanced)."""
        keys = [k for k in classes if classes[k]]
        if not keys:
            return None
        return self.d.choice(classes[self.d.choice(keys)])

    def t_more(self, i: int) -> bool:
        b = self._second()
        a = self._pictures()[0]
        sa, sb = self.media[a]["value"], self.media[b]["value"]
        classes: dict[str, list[dict]] = {k: [] for k in MORE_ANSWERS}
        for f in FILTERS:
            na, nb = len(sa.matching(f)), len(sb.matching(f))
            if na or nb:
                classes[MORE_ANSWERS[0] if na > nb else MORE_ANSWERS[1] if nb > na else MORE_ANSWERS[2]].append(f)
        f = self._balanced(classes)
        return f is not None and self._add({"op": "more", "filter": f, "pictures": [a, b]}, "media",
                                           self._media_needs(b, i))

    def t_both(self, i: int) -> bool:
        b = self._second()
        a = self._pictures()[0]
        sa, sb = self.media[a]["value"], self.media[b]["value"]
        classes: dict[str, list[dict]] = {"yes": [], "no": []}
        for f in FILTERS:
            na, nb = len(sa.matching(f)), len(sb.matching(f))
            if na or nb:
                classes["yes" if na and nb else "no"].append(f)
        f = self._balanced(classes)
        return f is not None and self._add({"op": "both", "filter": f, "pictures": [a, b]}, "media",
                                           self._media_needs(b, i))

    def t_picture_count(self, i: int) -> bool:
        m = self.d.choice(self._pictures())
        scene = self.media[m]["value"]
        f = self._object_filter(scene, 1 + self.d.below(2)) if self.d.random() < 0.7 else \
            {"shape": self.d.choice(VALUES["shape"])}
        program = {"op": "picture_count", "media": m, "filter": f, "picture": self._picture_name(m)}
        return self._add(program, self._ref(m, i), self._media_needs(m, i))

    def t_picture_attr(self, i: int) -> bool:
        m = self.d.choice(self._pictures())
        scene = self.media[m]["value"]
        o, attr = self.d.below(len(scene.objects)), self.d.choice(ATTRIBUTES)
        descs = unique_descs(scene.objects, o, attr)
        if not descs:
            return False
        program = {"op": "picture_attr", "media": m, "target": o, "attr": attr, "desc": self.d.choice(descs),
                   "picture": self._picture_name(m)}
        return self._add(program, self._ref(m, i), self._media_needs(m, i))

    # -- across media: "that many" takes the number the previous round answered about new media
    def t_that_many(self, i: int) -> bool:
        prev = self.records[i - 1]
        op = prev["program"]["op"]
        if op not in ("beep_count", "move_count", "picture_count"):
            return False
        pics = self._pictures()
        if op == "picture_count":
            others = [p for p in pics if p != prev["program"]["media"]]
            if not others:
                return False
            m = others[0]
        else:
            m = self.d.choice(pics)
        n = int(prev["answer"])
        scene = self.media[m]["value"]
        classes = {"yes": [], "no": []}
        for f in FILTERS:
            count = len(scene.matching(f))
            classes["yes" if count == n else "no"].append(f)
        f = self._balanced(classes)
        program = {"op": "that_many", "media": m, "filter": f, "picture": self._picture_name(m), "number": n}
        return self._add(program, "count", [i - 1, *self._media_needs(m, i)])

    # -- the dialogues
    def motion(self) -> list[dict]:
        self.clip_caption(sample_clip(self.d, self.size, exclude_pairs=self.exclude))
        for i in range(1, self.rounds + 1):
            self._follow_up(i, MOTION_WEIGHTS, fallback=self._motion_fallback)
        return self.records

    def mixed(self, modalities) -> list[dict]:
        scene = sample_scene(self.d, self.size, exclude_pairs=self.exclude)
        segments = [s for s in MODALITIES if s in modalities]
        k = 1 if len(segments) == 1 or self.rounds < 5 or self.d.random() < 0.5 else 2
        chosen = self.d.sample(segments, k)
        a = 1 + self.d.below(min(3, self.rounds - 2 * k))  # picture-world rounds before the new media
        base = generate_dialogue(scene, self.d, a)
        self._show("image", scene, 0)
        for rd in base:
            needs = [] if rd["depends_on"] is None else [rd["depends_on"]]
            rd = dict(rd, needs=needs, media=[0] if rd["round"] == 0 else [])
            self.records.append(rd)
            self.focus.append(None)
        openers = [a + 1]
        if k == 2:
            openers.append(a + 3 + self.d.below(self.rounds - a - 3))  # a follow-up in between and after
        weights: dict[str, float] = {}
        for i in range(a + 1, self.rounds + 1):
            if i in openers:
                seg = chosen[openers.index(i)]
                {"image": self.open_picture, "audio": self.open_beeps, "video": self.open_clip}[seg](i)
                weights.update({"image": PICTURE_WEIGHTS, "audio": BEEP_WEIGHTS,
                                "video": {t: w for t, w in MOTION_WEIGHTS.items() if t != "clip_attr"}}[seg])
                weights["that_many"] = CROSS_WEIGHT
                continue
            self._follow_up(i, weights, fallback=self._fallback)
        return self.records

    def _follow_up(self, i: int, weights: dict[str, float], fallback) -> None:
        for t in self.d.weighted_order(weights):
            if getattr(self, f"t_{t}")(i):
                return
        fallback(i)

    def _fallback(self, i: int) -> None:
        """Always possible: a count about the first picture, asked again if need be."""
        m = self._pictures()[0]
        scene = self.media[m]["value"]
        program = {"op": "picture_count", "media": m, "filter": self._object_filter(scene, 1),
                   "picture": self._picture_name(m)}
        self._add(program, "none", [], allow_repeat=True)

    def _motion_fallback(self, i: int) -> None:
        """Always possible: which way a shape moves, asked again if need be."""
        m = self._clip()
        clip = self.media[m]["value"]
        o = self.d.below(len(clip.movers))
        self._ask_object("direction", i, o, "none", [], desc=self._clip_desc(clip, o), allow_repeat=True)


def generate_media_dialogue(kind: str, draws: Draws, *, image_size: int = 64, rounds: int = 8,
                            modalities=MODALITIES, exclude_pairs=None) -> tuple[list[dict], list[dict]]:
    """(media, rounds) of one dialogue: media[i] = {"type", "round", "value": Scene | Beeps | Clip}.
    exclude_pairs: (shape, colour) pairs no picture or clip shows (the held-out combos, heldout.py)."""
    g = _MediaDialogue(draws, image_size, rounds, exclude_pairs)
    records = g.motion() if kind == "motion" else g.mixed(modalities)
    return g.media, records
