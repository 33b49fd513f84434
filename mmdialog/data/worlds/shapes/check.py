"""Replay a dialogue record and prove every round right.

`check_record` rebuilds the dialogue state from the scene and the round programs and
checks, round by round: the words (question_text, or one of its held-out `paraphrases` in a record
marked "templates": "paraphrase"), the answer (answer_of), that each
reference resolves to the program's object (a unique description in the image, the
previous focus, the name given earlier, an earlier object for "we talked about
earlier"), and that depends_on, distance and scored say what the round needs.
"""

from __future__ import annotations

from mmdialog.data.worlds.shapes.dialogue import CHAT, FAR_FORMS, answer_of, question_text
from mmdialog.data.worlds.shapes.heldout import paraphrases
from mmdialog.data.worlds.shapes.wording import is_wording
from mmdialog.data.worlds.shapes.scene import ATTRIBUTES, Scene
from mmdialog.errors import MMDialogError


# op -> (family, ref) a round of it has (None: any ref its checker accepts)
EXPECTED = {"caption": ("caption", "none"), "count": ("count", None), "exist": ("exist", "none"),
            "query": ("attribute", None), "name": ("statement", "none"), "recall": ("memory", "memory"),
            "chat": ("chat", "none")}


def check_record(record: dict) -> None:
    """Raise MMDialogError naming the dialogue and round at the first thing that is not right."""
    replay = _Replay(record)
    for i, rd in enumerate(record["rounds"]):
        replay.check_round(i, rd)


class _Replay:
    """The dialogue state rebuilt round by round: each round's focus, what was said of each object, the names."""

    def __init__(self, record: dict):
        self.record = record
        self.scene = Scene.from_dict(record["scene"])
        self.objs = self.scene.objects
        self.focus: list[int | None] = []
        self.last: dict[int, int] = {}  # object -> last round it was the focus
        self.known: list[set[str]] = [set() for _ in self.objs]
        self.names: dict[str, tuple[int, dict, int]] = {}  # name -> (object, description, round)
        self.named: dict[int, str] = {}
        self.paraphrased = record.get("templates") == "paraphrase"  # a held-out split's wordings (heldout.py)
        self.i, self.rd = 0, None  # the round being checked

    def fail(self, msg: str):
        raise MMDialogError(f"{self.record.get('id', 'dialogue')} round {self.i} ({self.rd['question']!r}): {msg}")

    def unique(self, desc: dict, target: int, hidden: str | None = None):
        if self.scene.matching(desc) != [target]:
            self.fail(f"description {desc} does not single out object {target} in the image")
        if hidden is not None and hidden in desc:
            self.fail(f"description {desc} gives away the asked {hidden}")

    def prev_program(self) -> dict:
        return self.record["rounds"][self.i - 1]["program"]

    def check_round(self, i: int, rd: dict) -> None:
        self.i, self.rd = i, rd
        fail = self.fail
        p, ref = rd["program"], rd["ref"]
        op = p["op"]
        if rd["round"] != i:
            fail(f"round index is {rd['round']}")
        if self.paraphrased:
            if rd["question"] not in paraphrases(p, ref):
                fail(f"question should read one of {paraphrases(p, ref)!r}")
        elif not is_wording(rd["question"], p, ref):
            fail(f"question should read {question_text(p, ref)!r} or another of its wordings (wording.py)")
        if rd["answer"] != answer_of(p, self.scene, self.named):
            fail(f"answer {rd['answer']!r} should be {answer_of(p, self.scene, self.named)!r}")
        if rd["scored"] != (op not in ("caption", "name", "chat")):
            fail(f"scored is {rd['scored']}")
        if rd["distance"] != (0 if rd["depends_on"] is None else i - rd["depends_on"]):
            fail(f"distance {rd['distance']} does not match depends_on {rd['depends_on']}")
        if (i == 0) != (op == "caption"):
            fail("the caption must be round 0 and only round 0")
        checker = OP_CHECKS.get(op)
        if checker is None:
            fail(f"unknown op {op!r}")
        target, learned, depends = checker(self, p, ref)
        if rd["depends_on"] != depends:
            fail(f"depends_on is {rd['depends_on']}, should be {depends}")
        expected = EXPECTED[op]
        if rd["family"] != expected[0] or (expected[1] is not None and ref != expected[1]):
            fail(f"family/ref {rd['family']}/{ref} for a {op}")
        self.focus.append(target)
        if target is not None:
            self.last[target] = i
            self.known[target] |= learned & set(ATTRIBUTES)


# ----------------------------------------------------------------------------- the ops
# Each takes (replay, program, ref) and returns (target, learned, depends_on) of the round.

def _caption(r: _Replay, p: dict, ref: str):
    if p["target"] is not None:
        r.unique(p["desc"], p["target"])
        return p["target"], set(p["desc"]), None
    return None, set(), None


def _count(r: _Replay, p: dict, ref: str):
    """count and exist, with "what about" (one value swapped) and "of them" (one attribute added) on a count."""
    m = r.scene.matching(p["filter"])
    depends = None
    if ref in ("ellipsis", "group"):
        prev = r.prev_program()
        depends = r.i - 1
        if prev["op"] != "count":
            r.fail(f"{ref} on a round that was not a count")
        pf, f = prev["filter"], p["filter"]
        if ref == "ellipsis":
            a = p["swapped"]
            if set(f) != set(pf) or f[a] == pf[a] or any(f[k] != pf[k] for k in f if k != a):
                r.fail(f"filter {f} is not {pf} with one value swapped")
        else:
            a = p["added"]
            if r.record["rounds"][r.i - 1]["answer"] == "0":
                r.fail("'of them' after a count of 0")
            if a in pf or {k: v for k, v in f.items() if k != a} != pf:
                r.fail(f"filter {f} is not {pf} plus one attribute")
    elif ref != "none":
        r.fail(f"ref {ref} on a {p['op']}")
    if p["op"] == "exist" and len(m) == 1:
        return m[0], set(p["filter"]), depends
    return None, set(), depends


def _query(r: _Replay, p: dict, ref: str):
    """An attribute of an object: by description, "it", "what about", "we talked about earlier" or its name."""
    i, target, attr = r.i, p["target"], p["attr"]
    learned = {attr}
    depends = None
    if ref == "none":
        r.unique(p["desc"], target, attr)
        learned |= set(p["desc"])
    elif ref == "pronoun":
        depends = i - 1
        if r.focus[i - 1] != target:
            r.fail(f"'it' is object {r.focus[i - 1]}, not {target}")
        if attr in r.known[target]:
            r.fail(f"the {attr} of 'it' was already given")
    elif ref == "ellipsis":
        depends = i - 1
        prev = r.prev_program()
        if prev["op"] != "query" or prev["attr"] != attr or prev["target"] == target:
            r.fail("'what about' does not follow a question on the same attribute of another object")
        r.unique(p["desc"], target, attr)
        learned |= set(p["desc"])
    elif ref == "far":
        depends = _far_reference(r, p)
    elif ref == "name":
        if p["name"] not in r.names or r.names[p["name"]][0] != target:
            r.fail(f"{p['name']} names no object or another one")
        if attr in r.names[p["name"]][1]:
            r.fail(f"the {attr} of {p['name']} was given with the name")
        depends = r.names[p["name"]][2]
    else:
        r.fail(f"ref {ref} on an attribute question")
    return target, learned, depends


def _far_reference(r: _Replay, p: dict) -> int:
    """The round a far reference reaches back to, once its description is proven to pick out its object."""
    desc, target, attr = p["desc"], p["target"], p["attr"]
    if sorted(desc) not in [sorted(form) for form in FAR_FORMS]:
        r.fail(f"far description {desc} is not one of {FAR_FORMS}")
    if not r.objs[target].matches(desc) or attr in desc:
        r.fail(f"far description {desc} does not fit object {target} or gives away the {attr}")
    if len(r.scene.matching(desc)) < 2:
        r.fail(f"far description {desc} is not ambiguous in the image")
    talked = [o for o in r.last if r.objs[o].matches(desc)]
    if talked != [target]:
        r.fail(f"far description {desc} matches objects {talked} of the dialogue, not just {target}")
    if not set(desc) <= r.known[target]:
        r.fail(f"far description {desc} uses attributes the dialogue never gave")
    depends = r.last[target]
    if r.i - depends < 2:
        r.fail("far reference to the previous round")
    return depends


def _name(r: _Replay, p: dict, ref: str):
    r.unique(p["desc"], p["target"])
    if p["name"] in r.names or p["target"] in r.named:
        r.fail("a name or an object named twice")
    r.names[p["name"]] = (p["target"], p["desc"], r.i)
    r.named[p["target"]] = p["name"]
    return p["target"], set(p["desc"]), None


def _recall(r: _Replay, p: dict, ref: str):
    r.unique(p["desc"], p["target"])
    name = r.named.get(p["target"])
    if name is None or r.names[name][1] != p["desc"]:
        r.fail("recalls a name never given with this description")
    depends = r.names[name][2]
    if r.i - depends < 2:
        r.fail("recalls the name given in the previous round")
    return p["target"], set(), depends


def _chat(r: _Replay, p: dict, ref: str):
    if p["kind"] not in CHAT or p["text"] not in CHAT[p["kind"]][0]:
        r.fail(f"chat turn {p} is none of dialogue.CHAT")
    return None, set(), None


OP_CHECKS = {"caption": _caption, "count": _count, "exist": _count, "query": _query, "name": _name,
             "recall": _recall, "chat": _chat}
