"""Held-out test splits: what a model trained on the world has never seen.

`mmdialog world --held-out long,combos,paraphrase` (or `generate_world(..., held_out=(...))`) writes, next
to train/val/test, one extra split per kind, each seeded like the others (dialogue i of split s draws from
`numpy.random.default_rng([seed, SPLIT_IDS[s], i])`) and each `held_out_dialogues` long (default: the size
of the test split):

- test_long: dialogues of `long_rounds` question rounds (default, and at least, twice the training
  rounds): later rounds, longer contexts and dependency distances training never had.
- test_combos: every scene holds at least one object whose shape-colour pair never occurs in
  train/val/test (three pairs, one per shape, with three distinct colours, drawn from the seed: every
  shape and every colour still occurs in training, just not together). With this kind, train/val/test
  are drawn without those pairs, so they differ from the default world of the same seed; the other
  kinds never change train/val/test.
- test_paraphrase: the dialogues of the templates, asked in other words (`paraphrases`): "Count the red
  circles.", "What is its size?", "And blue ones?", "the red thing we mentioned before", ... No wording
  of this split occurs in any other split. The caption question stays as it is (the format fixes it).

world.json lists them under "heldout" (only when there are any, so a default world keeps its bytes):
{"splits": {name: {"count", "rounds", "description"}}, "pairs": [[shape, colour], ...] (with combos)}.
A paraphrased record carries "templates": "paraphrase", and `check_record` accepts exactly these wordings.
"""

from __future__ import annotations

import numpy as np

from mmdialog.data.worlds.shapes.dialogue import CAPTION_QUESTION, phrase, plural
from mmdialog.data.worlds.shapes.scene import COLOURS, SHAPES

KINDS = {"long": "test_long", "combos": "test_combos", "paraphrase": "test_paraphrase"}
HELDOUT_SPLITS = tuple(KINDS.values())
SPLIT_IDS = {"train": 0, "val": 1, "test": 2, "test_long": 3, "test_combos": 4, "test_paraphrase": 5}
DESCRIPTIONS = {
    "test_long": "dialogues with at least twice the question rounds of training",
    "test_combos": "each scene holds a shape-colour pair that never occurs in train/val/test",
    "test_paraphrase": "the questions in wordings that never occur in the other splits",
}


def heldout_pairs(seed: int) -> list[tuple[str, str]]:
    """Three (shape, colour) pairs, one per shape, three distinct colours, drawn from the world seed."""
    colours = np.random.default_rng([seed, 1000]).permutation(len(COLOURS))[: len(SHAPES)]
    names = list(COLOURS)
    return [(shape, names[int(c)]) for shape, c in zip(SHAPES, colours)]


def parse_kinds(spec) -> tuple[str, ...]:
    """'long,combos' or ['long', 'paraphrase'] or 'all' -> the kinds in KINDS order; unknown ones are errors."""
    from mmdialog.errors import MMDialogError

    items = spec.split(",") if isinstance(spec, str) else [x for s in spec for x in str(s).split(",")]
    items = [x.strip() for x in items if x.strip()]
    if "all" in items:
        items = list(KINDS)
    unknown = [x for x in items if x not in KINDS]
    if unknown:
        raise MMDialogError(f"unknown held-out split kind(s) {unknown}; choose from {', '.join(KINDS)} or all")
    return tuple(k for k in KINDS if k in items)


def touches_pairs(record: dict, r: int, pairs) -> bool:
    """Whether round r is about a held-out pair: its object has one, or its filter names one."""
    pairs = {tuple(p) for p in pairs}
    p = record["rounds"][r]["program"]
    objs = record["scene"]["objects"]
    target = p.get("target")
    if target is not None and (objs[target]["shape"], objs[target]["colour"]) in pairs:
        return True
    for key in ("filter", "desc"):
        d = p.get(key) or {}
        if (d.get("shape"), d.get("colour")) in pairs:
            return True
    return False


# ----------------------------------------------------------------------------- paraphrases

def _attr_question(attr: str, subject: str) -> list[str]:
    if attr == "position":
        return [f"Where can I find {subject}?", f"In which part of the picture is {subject}?"]
    if subject == "it":
        return [f"What is its {attr}?", f"Tell me its {attr}."]
    return [f"What is the {attr} of {subject}?", f"Tell me the {attr} of {subject}."]


def paraphrases(program: dict, ref: str) -> list[str]:
    """The held-out wordings of a round (never equal to `question_text(program, ref)`)."""
    op = program["op"]
    if op == "caption":
        return [CAPTION_QUESTION]
    if op == "chat":
        return [program["text"]]  # not about the picture: as it was
    if op == "count":
        f = program["filter"]
        if ref == "ellipsis":
            a = program["swapped"]
            what = f"{f[a]}s" if a == "shape" else f"the {f[a]} ones"
            return [f"And {what}?", f"How about {what}?"]
        if ref == "group":
            a = program["added"]
            what = f[a] + "s" if a == "shape" else f[a]
            return [f"Of those, how many are {what}?", f"How many of these are {what}?"]
        return [f"Count the {plural(f)}.", f"How many {plural(f)} can you see?"]
    if op == "exist":
        return [f"Do you see a {phrase(program['filter'])}?", f"Can you find a {phrase(program['filter'])}?"]
    if op == "query":
        attr = program["attr"]
        if ref == "pronoun":
            return _attr_question(attr, "it")
        if ref == "ellipsis":
            return [f"And the {phrase(program['desc'])}?", f"How about the {phrase(program['desc'])}?"]
        if ref == "far":
            return _attr_question(attr, f"the {phrase(program['desc'])} we mentioned before")
        if ref == "name":
            return _attr_question(attr, program["name"])
        return _attr_question(attr, f"the {phrase(program['desc'])}")
    if op == "name":
        return [f"The {phrase(program['desc'])} will be called {program['name']}.",
                f"I'll name the {phrase(program['desc'])} {program['name']}."]
    if op == "recall":
        return [f"What name did we give the {phrase(program['desc'])}?", f"What is the {phrase(program['desc'])} called?"]
    raise ValueError(f"unknown program op {op!r}")


def paraphrase_record(record: dict, draws) -> dict:
    """The record with every question asked in one of its held-out wordings (drawn from `draws`)."""
    rounds = []
    for rd in record["rounds"]:
        options = paraphrases(rd["program"], rd["ref"])
        rounds.append({**rd, "question": options[draws.below(len(options))]})
    return {**record, "rounds": rounds, "templates": "paraphrase"}
