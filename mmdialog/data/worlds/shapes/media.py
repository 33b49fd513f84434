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

This module holds the words and the answers; media_dialogue.py draws the dialogues from the families of
questions (media_clips.py, media_beeps.py, media_pictures.py), which share one media_state.DialogueState.
"""

from __future__ import annotations

from itertools import combinations

from mmdialog.data.worlds.shapes.dialogue import COUNT_ATTRIBUTES, phrase, plural
from mmdialog.data.worlds.shapes.motion import SPEED_WORDS
from mmdialog.data.worlds.shapes.scene import ATTRIBUTES, VALUES

KINDS = ("mixed", "motion")
MODALITIES = ("image", "audio", "video")
FAMILIES = ("caption", "statement", "chat", "count", "exist", "attribute", "memory", "motion", "beeps", "compare", "cross")
REFS = ("none", "pronoun", "ellipsis", "group", "far", "name", "memory", "media", "count")
IMAGE_OPS = ("caption", "count", "exist", "query", "name", "recall", "chat")  # the picture world's programs (dialogue.py)

CLIP_CAPTION = "Describe the clip."
LEADS = {"beep_count": "Now listen", "move_count": "Now watch this clip", "picture_count": "Now look at this picture"}
ORDINALS = ("first", "second", "third", "fourth", "fifth")
CLIP_ATTRIBUTES = ("shape", "colour", "size")
MORE_ANSWERS = ("the first", "the second", "neither")


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
