"""Replay a dialogue record and prove every round right.

`check_record` rebuilds the dialogue state from the scene and the round programs and
checks, round by round: the words (question_text, or one of its held-out `paraphrases` in a record
marked "templates": "paraphrase"), the answer (answer_of), that each
reference resolves to the program's object (a unique description in the image, the
previous focus, the name given earlier, an earlier object for "we talked about
earlier"), and that depends_on, distance and scored say what the round needs.
"""

from __future__ import annotations

from mmdialog.data.worlds.shapes.dialogue import CAPTION_QUESTION, CHAT, FAR_FORMS, answer_of, question_text
from mmdialog.data.worlds.shapes.heldout import paraphrases
from mmdialog.data.worlds.shapes.wording import is_wording
from mmdialog.data.worlds.shapes.scene import ATTRIBUTES, Scene
from mmdialog.errors import MMDialogError


def check_record(record: dict) -> None:
    """Raise MMDialogError naming the dialogue and round at the first thing that is not right."""
    scene = Scene.from_dict(record["scene"])
    objs = scene.objects
    focus: list[int | None] = []
    last: dict[int, int] = {}  # object -> last round it was the focus
    known: list[set[str]] = [set() for _ in objs]
    names: dict[str, tuple[int, dict, int]] = {}  # name -> (object, description, round)
    named: dict[int, str] = {}
    paraphrased = record.get("templates") == "paraphrase"  # a held-out split's wordings (heldout.py)

    for i, rd in enumerate(record["rounds"]):
        def fail(msg: str):
            raise MMDialogError(f"{record.get('id', 'dialogue')} round {i} ({rd['question']!r}): {msg}")

        def unique(desc: dict, target: int, hidden: str | None = None):
            if scene.matching(desc) != [target]:
                fail(f"description {desc} does not single out object {target} in the image")
            if hidden is not None and hidden in desc:
                fail(f"description {desc} gives away the asked {hidden}")

        p, ref = rd["program"], rd["ref"]
        op = p["op"]
        if rd["round"] != i:
            fail(f"round index is {rd['round']}")
        if paraphrased:
            if rd["question"] not in paraphrases(p, ref):
                fail(f"question should read one of {paraphrases(p, ref)!r}")
        elif not is_wording(rd["question"], p, ref):
            fail(f"question should read {question_text(p, ref)!r} or another of its wordings (wording.py)")
        if rd["answer"] != answer_of(p, scene, named):
            fail(f"answer {rd['answer']!r} should be {answer_of(p, scene, named)!r}")
        if rd["scored"] != (op not in ("caption", "name", "chat")):
            fail(f"scored is {rd['scored']}")
        if rd["distance"] != (0 if rd["depends_on"] is None else i - rd["depends_on"]):
            fail(f"distance {rd['distance']} does not match depends_on {rd['depends_on']}")
        if (i == 0) != (op == "caption"):
            fail("the caption must be round 0 and only round 0")

        target, learned, depends = None, set(), None
        if op == "caption":
            if rd["question"] != CAPTION_QUESTION:
                fail("caption question")
            if p["target"] is not None:
                unique(p["desc"], p["target"])
                target, learned = p["target"], set(p["desc"])
        elif op in ("count", "exist"):
            m = scene.matching(p["filter"])
            if ref in ("ellipsis", "group"):
                prev = record["rounds"][i - 1]["program"]
                depends = i - 1
                if prev["op"] != "count":
                    fail(f"{ref} on a round that was not a count")
                pf, f = prev["filter"], p["filter"]
                if ref == "ellipsis":
                    a = p["swapped"]
                    if set(f) != set(pf) or f[a] == pf[a] or any(f[k] != pf[k] for k in f if k != a):
                        fail(f"filter {f} is not {pf} with one value swapped")
                else:
                    a = p["added"]
                    if record["rounds"][i - 1]["answer"] == "0":
                        fail("'of them' after a count of 0")
                    if a in pf or {k: v for k, v in f.items() if k != a} != pf:
                        fail(f"filter {f} is not {pf} plus one attribute")
            elif ref != "none":
                fail(f"ref {ref} on a {op}")
            if op == "exist" and len(m) == 1:
                target, learned = m[0], set(p["filter"])
        elif op == "query":
            target, attr = p["target"], p["attr"]
            learned = {attr}
            if ref == "none":
                unique(p["desc"], target, attr)
                learned |= set(p["desc"])
            elif ref == "pronoun":
                depends = i - 1
                if focus[i - 1] != target:
                    fail(f"'it' is object {focus[i - 1]}, not {target}")
                if attr in known[target]:
                    fail(f"the {attr} of 'it' was already given")
            elif ref == "ellipsis":
                depends = i - 1
                prev = record["rounds"][i - 1]["program"]
                if prev["op"] != "query" or prev["attr"] != attr or prev["target"] == target:
                    fail("'what about' does not follow a question on the same attribute of another object")
                unique(p["desc"], target, attr)
                learned |= set(p["desc"])
            elif ref == "far":
                desc = p["desc"]
                if sorted(desc) not in [sorted(form) for form in FAR_FORMS]:
                    fail(f"far description {desc} is not one of {FAR_FORMS}")
                if not objs[target].matches(desc) or attr in desc:
                    fail(f"far description {desc} does not fit object {target} or gives away the {attr}")
                if len(scene.matching(desc)) < 2:
                    fail(f"far description {desc} is not ambiguous in the image")
                talked = [o for o in last if objs[o].matches(desc)]
                if talked != [target]:
                    fail(f"far description {desc} matches objects {talked} of the dialogue, not just {target}")
                if not set(desc) <= known[target]:
                    fail(f"far description {desc} uses attributes the dialogue never gave")
                depends = last[target]
                if i - depends < 2:
                    fail("far reference to the previous round")
            elif ref == "name":
                if p["name"] not in names or names[p["name"]][0] != target:
                    fail(f"{p['name']} names no object or another one")
                if attr in names[p["name"]][1]:
                    fail(f"the {attr} of {p['name']} was given with the name")
                depends = names[p["name"]][2]
            else:
                fail(f"ref {ref} on an attribute question")
        elif op == "name":
            unique(p["desc"], p["target"])
            if p["name"] in names or p["target"] in named:
                fail("a name or an object named twice")
            names[p["name"]] = (p["target"], p["desc"], i)
            named[p["target"]] = p["name"]
            target, learned = p["target"], set(p["desc"])
        elif op == "recall":
            unique(p["desc"], p["target"])
            name = named.get(p["target"])
            if name is None or names[name][1] != p["desc"]:
                fail("recalls a name never given with this description")
            target, depends = p["target"], names[name][2]
            if i - depends < 2:
                fail("recalls the name given in the previous round")
        elif op == "chat":
            if p["kind"] not in CHAT or p["text"] not in CHAT[p["kind"]][0]:
                fail(f"chat turn {p} is none of dialogue.CHAT")
        else:
            fail(f"unknown op {op!r}")

        if rd["depends_on"] != depends:
            fail(f"depends_on is {rd['depends_on']}, should be {depends}")
        expected = {"caption": ("caption", "none"), "count": ("count", None), "exist": ("exist", "none"),
                    "query": ("attribute", None), "name": ("statement", "none"), "recall": ("memory", "memory"),
                    "chat": ("chat", "none")}[op]
        if rd["family"] != expected[0] or (expected[1] is not None and ref != expected[1]):
            fail(f"family/ref {rd['family']}/{ref} for a {op}")
        focus.append(target)
        if target is not None:
            last[target] = i
            known[target] |= learned & set(ATTRIBUTES)
