"""Follow-ups judged on the conversation as it happened: when the model's own caption named another object
of the picture, "the circle we talked about earlier" is that object."""

import random

from mmdialog.data.worlds.shapes import make_dialogue
from mmdialog.data.worlds.shapes.as_said import _chain, golds_as_said, parse_caption
from mmdialog.data.worlds.shapes.dialogue import phrase
from mmdialog.data.worlds.shapes.scene import ATTRIBUTES, Scene


def obj(shape, colour, size, row, col, position):
    return {"shape": shape, "colour": colour, "size": size, "row": row, "col": col, "x": 8 * col, "y": 8 * row,
            "position": position}


def rnd(r, family, ref, depends_on, program, question, answer, scored=True):
    return {"round": r, "family": family, "ref": ref, "depends_on": depends_on, "program": program,
            "question": question, "answer": answer, "distance": 0 if depends_on is None else r - depends_on,
            "scored": scored}


# Two circles: the world's caption named the large yellow one; a model may name the small green one.
RECORD = {
    "id": "t", "image": "t.png",
    "scene": {"size": 64, "background": 213, "objects": [
        obj("circle", "green", "small", 0, 2, "top right"), obj("circle", "yellow", "large", 1, 2, "top right"),
        obj("triangle", "cyan", "small", 2, 2, "bottom right")]},
    "rounds": [
        rnd(0, "caption", "none", None, {"op": "caption", "target": 1, "desc": {"size": "large", "colour": "yellow",
            "shape": "circle"}}, "Describe the picture.", "There are 3 shapes. One is a large yellow circle.", False),
        rnd(1, "count", "none", None, {"op": "count", "filter": {"shape": "circle"}}, "How many circles are there?", "2"),
        rnd(2, "attribute", "far", 0, {"op": "query", "attr": "size", "target": 1, "desc": {"shape": "circle"}},
            "What size is the circle we talked about earlier?", "large"),
        rnd(3, "attribute", "pronoun", 2, {"op": "query", "attr": "colour", "target": 1}, "What colour is it?",
            "yellow"),
        rnd(4, "attribute", "far", 0, {"op": "query", "attr": "colour", "target": 1, "desc": {"size": "large"}},
            "What colour is the large thing we talked about earlier?", "yellow"),
        rnd(5, "attribute", "none", None, {"op": "query", "attr": "size", "target": 2, "desc": {"shape": "triangle"}},
            "What size is the triangle?", "small"),
    ],
}


def replies(caption: str) -> list[str]:
    return [caption] + [rd["answer"] for rd in RECORD["rounds"][1:]]


def test_parse_caption_reads_the_worlds_words_and_nothing_else():
    assert parse_caption("There are 3 shapes. One is a small green circle.") == \
        {"size": "small", "colour": "green", "shape": "circle"}
    assert parse_caption("there are 5 shapes.  one is a large thing at the top left.") == \
        {"size": "large", "position": "top left"}
    assert parse_caption("There are 4 shapes.") == {}
    assert parse_caption("There are 3 shapes. One is a small green blob.") is None
    assert parse_caption("I can only answer questions about the picture.") is None


def test_followups_about_the_object_the_model_named():
    golds = golds_as_said(RECORD, replies("There are 3 shapes. One is a small green circle."))
    # round 2 asks about "the circle we talked about": the model talked about the small green one
    # round 3's "it" follows round 2; round 4's "large thing" does not fit the small circle: scripted
    # round 1 and 5 do not refer back at all
    assert golds == [golds[0], "2", "small", "green", "yellow", "small"]


def test_nothing_changes_when_the_caption_is_the_scripted_one_or_names_nothing_real():
    scripted = [rd["answer"] for rd in RECORD["rounds"]]
    for caption in ("There are 3 shapes. One is a large yellow circle.",  # the world's own object
                    "There are 3 shapes. One is a large yellow circle at the top right.",
                    "There are 3 shapes. One is a purple square.",  # no such object: its error counts
                    "There are 3 shapes. One is a circle.",  # two circles: which one is not said
                    "There are 3 shapes.", "Hello!"):
        assert golds_as_said(RECORD, replies(caption)) == scripted, caption
    assert golds_as_said({k: v for k, v in RECORD.items() if k != "scene"},
                         replies("There are 3 shapes. One is a small green circle.")) == scripted


def test_on_generated_dialogues_only_rounds_that_refer_back_to_the_caption_change():
    rng = random.Random(0)
    changed = 0
    for i in range(150):
        rec, _ = make_dialogue(7, "test", i)
        first, scene = rec["rounds"][0]["program"], Scene.from_dict(rec["scene"])
        if first.get("target") is None:
            continue
        scripted = [rd["answer"] for rd in rec["rounds"]]
        gold_replies = list(scripted)
        assert golds_as_said(rec, gold_replies) == scripted
        others = [o for o in range(len(scene.objects)) if o != first["target"]]
        o = rng.choice(others)
        desc = {a: scene.objects[o].get(a) for a in ATTRIBUTES}
        if len(scene.matching(desc)) != 1:
            continue
        golds = golds_as_said(rec, [f"There are {len(scene.objects)} shapes. One is a {phrase(desc)}."] + scripted[1:])
        for r, (g, s) in enumerate(zip(golds, scripted)):
            if r == 0 or g == s:
                continue
            rd = rec["rounds"][r]
            changed += 1
            assert 0 in _chain(rec["rounds"], r) and rd["program"]["target"] == first["target"]
            assert g == scene.objects[o].get(rd["program"]["attr"]), (rec["id"], r)
    assert changed >= 10, changed
