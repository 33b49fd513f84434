"""Dialogues about a Scene, in the spirit of CLEVR-Dialog.

Round 0 is a caption. Each later round is drawn from the templates that are feasible
given the dialogue so far, with probability proportional to TEMPLATE_WEIGHTS. Every
round keeps a small `program` (what was asked about which object), from which
`question_text` and `answer_of` rebuild the words; `check.check_record` replays the
programs to prove every answer right.

The dialogue state is:
- focus[r]: the object round r was about (None for counts, "no" answers, ...);
- last[o]: the last round whose focus was object o (the objects "we talked about");
- known[o]: the attributes of o that the dialogue has stated or answered;
- names: the names given by statement rounds.
"""

from __future__ import annotations

from itertools import combinations

from mmdialog.data.worlds.shapes.scene import ATTRIBUTES, VALUES, Draws, Scene

NAMES = ("Max", "Luna", "Pip", "Rex", "Mia", "Leo", "Zoe", "Kai", "Ada", "Bo", "Ivy", "Sam")
CAPTION_QUESTION = "Describe the picture."
# ... and how else people ask for it (a world with ordinary phrasing asks the canonical one half of the time)
CAPTION_WORDINGS = (CAPTION_QUESTION, "What do you see?", "What is in the picture?", "Describe this image.",
                    "What does the image show?", "Can you describe the picture?", "Tell me what you see.")
COUNT_ATTRIBUTES = ("colour", "size", "shape")  # filters of count / exist / group questions
TOTAL_COUNT = 0.1  # the share of count questions asked about every object ("How many things are there?")
# Descriptions a far reference may use: "the red thing", "the circle", "the large circle" ...
FAR_FORMS = (("colour",), ("size",), ("shape",), ("colour", "shape"), ("size", "shape"))
MAX_NAMES = 2  # names given per dialogue

# Relative weights of the templates among those feasible at a round. Tuned (see the
# summary of `generate_world`) so that ~40% of questions need no history and
# distances 2 and 3+ each make ~15%: references to the far past are often infeasible,
# so they get large weights.
TEMPLATE_WEIGHTS = {
    "count": 1.0, "exist": 0.5, "attribute": 0.8,  # distance 0
    "pronoun": 1.5, "ellipsis_attribute": 1.0, "ellipsis_count": 1.5, "group": 3.0,  # distance 1
    "far": 3.0, "memory": 2.0, "name_attribute": 1.0,  # distance >= 2 (name_attribute: >= 1)
    "statement": 0.7,  # "Let's call ... Max.": not a question, makes memory / name questions possible
    "chat": 0.25,  # "Hello!", "What can you do?": not about the picture, a short honest answer (not scored)
}

# Turns that are not about the picture: kind -> (what people say, the answer)
CHAT = {  # kind -> (questions, the answer)
    "greeting": (("Hello!", "Hi", "hello, who are you?", "Hey there!", "Good morning."),
                 "Hello! I answer questions about the picture."),
    "identity": (("Who are you?", "What are you?", "Are you a person?"),
                 "I am a small model that answers questions about the picture."),
    "abilities": (("What can you do?", "What can I ask you?", "How can you help me?"),
                  "I can count the shapes and tell their colour, size, shape and position."),
    "thanks": (("Thanks!", "Thank you.", "thanks a lot"), "You are welcome."),
    "offtopic": (("What is the weather like today?", "Tell me a joke.", "What time is it?",
                  "Can you write me a poem?"), "I can only answer questions about the picture."),
}


FAMILIES = ("caption", "statement", "chat", "count", "exist", "attribute", "memory")
REFS = ("none", "pronoun", "ellipsis", "group", "far", "name", "memory")


# ----------------------------------------------------------------------------- words

def phrase(desc: dict[str, str]) -> str:
    """{"size": "large", "colour": "red", "shape": "circle", "position": "top left"} ->
    "large red circle at the top left"; without a shape the noun is "thing"."""
    words = [desc[a] for a in ("size", "colour") if a in desc]
    words.append(desc.get("shape", "thing"))
    text = " ".join(words)
    return text + f" at the {desc['position']}" if "position" in desc else text


def plural(desc: dict[str, str]) -> str:
    """{"colour": "red", "shape": "circle"} -> "red circles"; no shape -> "things"."""
    words = [desc[a] for a in ("size", "colour") if a in desc]
    words.append(desc["shape"] + "s" if "shape" in desc else "things")
    return " ".join(words)


def attribute_question(attr: str, subject: str) -> str:
    return f"Where is {subject}?" if attr == "position" else f"What {attr} is {subject}?"


def question_text(program: dict, ref: str) -> str:
    """The words of a round, from its program and its kind of reference."""
    op = program["op"]
    if op == "caption":
        return CAPTION_QUESTION
    if op == "chat":
        return program["text"]
    if op == "count":
        f = program["filter"]
        if ref == "ellipsis":
            a = program["swapped"]
            return f"What about {f[a]}s?" if a == "shape" else f"What about {f[a]} ones?"
        if ref == "group":
            a = program["added"]
            return f"How many of them are {f[a] + 's' if a == 'shape' else f[a]}?"
        return f"How many {plural(f)} are there?"
    if op == "exist":
        return f"Is there a {phrase(program['filter'])}?"
    if op == "query":
        attr = program["attr"]
        if ref == "pronoun":
            return attribute_question(attr, "it")
        if ref == "ellipsis":
            return f"What about the {phrase(program['desc'])}?"
        if ref == "far":
            return attribute_question(attr, f"the {phrase(program['desc'])} we talked about earlier")
        if ref == "name":
            return attribute_question(attr, program["name"])
        return attribute_question(attr, f"the {phrase(program['desc'])}")
    if op == "name":
        return f"Let's call the {phrase(program['desc'])} {program['name']}."
    if op == "recall":
        return f"What did we call the {phrase(program['desc'])}?"
    raise ValueError(f"unknown program op {op!r}")


def answer_of(program: dict, scene: Scene, names: dict[int, str]) -> str:
    """The right answer to a round, given the scene and the names given so far (object -> name)."""
    op = program["op"]
    if op == "caption":
        text = f"There are {len(scene.objects)} shapes."
        return text + f" One is a {phrase(program['desc'])}." if program["target"] is not None else text
    if op == "count":
        return str(len(scene.matching(program["filter"])))
    if op == "exist":
        return "yes" if scene.matching(program["filter"]) else "no"
    if op == "query":
        return scene.objects[program["target"]].get(program["attr"])
    if op == "name":
        return "OK."
    if op == "chat":
        return CHAT[program["kind"]][1]
    if op == "recall":
        return names[program["target"]]
    raise ValueError(f"unknown program op {op!r}")


# ----------------------------------------------------------------------------- generator

_SUBSETS = [s for k in range(1, len(ATTRIBUTES) + 1) for s in combinations(ATTRIBUTES, k)]
_GETTERS = [(s, lambda v, s=s: tuple(map(v.__getitem__, s))) for s in _SUBSETS]


class _Dialogue:
    def __init__(self, scene: Scene, draws: Draws, rounds: int):
        self.scene, self.objs, self.d, self.rounds = scene, scene.objects, draws, rounds
        self.records: list[dict] = []
        self.focus: list[int | None] = []
        self.known: list[set[str]] = [set() for _ in self.objs]
        self.last: dict[int, int] = {}
        self.names: dict[str, tuple[int, dict, int]] = {}  # name -> (object, description, round)
        self.named: dict[int, str] = {}
        self.recalled: set[str] = set()
        self.asked: set[str] = set()  # image and name questions are never asked twice
        self.far_asked: set[tuple[int, str]] = set()  # (object, attribute) asked by far references
        # index[(attrs, values)]: the objects with those values; unique[o]: the attribute
        # subsets that single out object o in the image, shortest first
        self.values = [{a: o.get(a) for a in ATTRIBUTES} for o in self.objs]
        self.index: dict[tuple, list[int]] = {}
        for s, get in _GETTERS:
            for i, v in enumerate(self.values):
                self.index.setdefault((s, get(v)), []).append(i)
        self.unique: list[list[tuple[str, ...]]] = [[] for _ in self.objs]
        for (s, _), objs in self.index.items():
            if len(objs) == 1:
                self.unique[objs[0]].append(s)
        for u in self.unique:
            u.sort(key=len)

    # -- helpers
    def _desc(self, o: int, attrs) -> dict[str, str]:
        return {a: self.values[o][a] for a in attrs}

    def _matching(self, desc: dict[str, str]) -> list[int]:
        """Scene.matching, from the index."""
        if not desc:
            return list(range(len(self.objs)))
        s = tuple(a for a in ATTRIBUTES if a in desc)
        return self.index.get((s, tuple(desc[a] for a in s)), [])

    def _short_desc(self, o: int, exclude: str | None) -> dict[str, str] | None:
        """The shortest description that singles out o in the image without naming `exclude`."""
        subsets = [s for s in self.unique[o] if exclude not in s]
        if not subsets:
            return None
        shortest = [s for s in subsets if len(s) == len(subsets[0])]
        return self._desc(o, self.d.choice(shortest))

    def _add(self, question: str, answer: str, family: str, ref: str, depends_on: int | None, program: dict,
             focus: int | None, learned=(), scored: bool = True) -> bool:
        i = len(self.records)
        self.records.append({
            "round": i, "question": question, "answer": answer, "family": family, "ref": ref,
            "depends_on": depends_on, "distance": 0 if depends_on is None else i - depends_on,
            "scored": scored, "program": program,
        })
        self.focus.append(focus)
        if focus is not None:
            self.last[focus] = i
            self.known[focus].update(learned)
        if ref in ("none", "name") and scored:
            self.asked.add(question)
        return True

    def _filter(self, k_probs: tuple[float, float, float], from_object: float) -> dict[str, str]:
        """A filter of 1-3 attributes (1, 2, 3 with probabilities k_probs); with probability
        `from_object` it copies the values of an object, so that it matches at least one."""
        u, k = self.d.random(), 1
        while k < 3 and u >= k_probs[k - 1]:
            u -= k_probs[k - 1]
            k += 1
        attrs = self.d.sample(COUNT_ATTRIBUTES, k)
        if self.d.random() < from_object:
            base = self.d.choice(self.objs)
            return {a: base.get(a) for a in attrs}
        return {a: self.d.choice(VALUES[a]) for a in attrs}

    # -- round 0
    def caption(self) -> None:
        n = len(self.objs)
        for o in self.d.sample(range(n), n):
            attrs = ["shape", "colour"] + [a for a in ("size", "position") if self.d.random() < 0.5]
            for extra in (None, "size", "position"):
                if extra is not None and extra not in attrs:
                    attrs.append(extra)
                if tuple(a for a in ATTRIBUTES if a in attrs) in self.unique[o]:
                    desc = self._desc(o, [a for a in ATTRIBUTES if a in attrs])
                    program = {"op": "caption", "target": o, "desc": desc}
                    self._add(CAPTION_QUESTION, answer_of(program, self.scene, {}), "caption", "none", None,
                              program, o, desc, scored=False)
                    return
        # every object has a twin in its quadrant: say only how many there are
        program = {"op": "caption", "target": None, "desc": None}
        self._add(CAPTION_QUESTION, answer_of(program, self.scene, {}), "caption", "none", None, program, None,
                  scored=False)

    # -- distance 0: the image alone answers
    def t_count(self, i: int, allow_repeat: bool = False) -> bool:
        for _ in range(4):
            # "How many things are there?" (objects, items, shapes): the total, as people ask it first
            f = {} if self.d.random() < TOTAL_COUNT else self._filter((0.45, 0.4, 0.15), from_object=0.7)
            program = {"op": "count", "filter": f}
            q = question_text(program, "none")
            if allow_repeat or q not in self.asked:
                return self._add(q, answer_of(program, self.scene, {}), "count", "none", None, program, None)
        return False

    def t_exist(self, i: int) -> bool:
        yes = self.d.random() < 0.5
        for _ in range(4):
            f = self._filter((0.3, 0.5, 0.2), from_object=1.0 if yes else 0.0)
            program = {"op": "exist", "filter": f}
            q = question_text(program, "none")
            if q in self.asked:
                continue
            m = self._matching(f)
            if yes or not m:
                # a "yes" with a single match brings that object into focus ("Is there ...?" "yes" "What size is it?")
                return self._add(q, answer_of(program, self.scene, {}), "exist", "none", None, program,
                                 m[0] if len(m) == 1 else None, f)
        return False

    def t_attribute(self, i: int) -> bool:
        attr = self.d.choice(ATTRIBUTES)
        cands = [o for o in range(len(self.objs)) if attr not in self.known[o] and self._short_desc_exists(o, attr)]
        if not cands:
            return False
        o = self.d.choice(cands)
        desc = self._short_desc(o, attr)
        program = {"op": "query", "attr": attr, "target": o, "desc": desc}
        q = question_text(program, "none")
        if q in self.asked:
            return False
        return self._add(q, answer_of(program, self.scene, {}), "attribute", "none", None, program, o,
                         (*desc, attr))

    def _short_desc_exists(self, o: int, exclude: str) -> bool:
        return any(exclude not in s for s in self.unique[o])

    # -- distance 1: the previous round is needed
    def t_pronoun(self, i: int) -> bool:
        p = self.focus[i - 1]
        if p is None:
            return False
        unknown = [a for a in ATTRIBUTES if a not in self.known[p]]
        if not unknown:
            return False
        attr = self.d.choice(unknown)
        program = {"op": "query", "attr": attr, "target": p}
        return self._add(question_text(program, "pronoun"), answer_of(program, self.scene, {}), "attribute",
                         "pronoun", i - 1, program, p, (attr,))

    def t_ellipsis_attribute(self, i: int) -> bool:
        prev = self.records[i - 1]["program"]
        if prev["op"] != "query":
            return False
        attr = prev["attr"]
        cands = [o for o in range(len(self.objs))
                 if o != prev["target"] and attr not in self.known[o] and self._short_desc_exists(o, attr)]
        if not cands:
            return False
        o = self.d.choice(cands)
        desc = self._short_desc(o, attr)
        program = {"op": "query", "attr": attr, "target": o, "desc": desc}
        return self._add(question_text(program, "ellipsis"), answer_of(program, self.scene, {}), "attribute",
                         "ellipsis", i - 1, program, o, (*desc, attr))

    def t_ellipsis_count(self, i: int) -> bool:
        prev = self.records[i - 1]["program"]
        if prev["op"] != "count":
            return False
        f = prev["filter"]
        # after "How many of them are red?" only "What about blue ones?" reads naturally
        swappable = [prev[k] for k in ("added", "swapped") if k in prev] or list(f)
        if not swappable:  # after the total count there is no value to swap
            return False
        attr = self.d.choice(swappable)
        rest = {a: v for a, v in f.items() if a != attr}
        present = sorted({self.objs[j].get(attr) for j in self._matching(rest)} - {f[attr]},
                         key=VALUES[attr].index)
        if present and self.d.random() < 0.6:
            value = self.d.choice(present)
        else:
            value = self.d.choice([v for v in VALUES[attr] if v != f[attr]])
        program = {"op": "count", "filter": {**f, attr: value}, "swapped": attr}
        return self._add(question_text(program, "ellipsis"), answer_of(program, self.scene, {}), "count",
                         "ellipsis", i - 1, program, None)

    def t_group(self, i: int) -> bool:
        prev = self.records[i - 1]
        if prev["program"]["op"] != "count" or prev["answer"] == "0":
            return False
        f = prev["program"]["filter"]
        free = [a for a in COUNT_ATTRIBUTES if a not in f]
        if not free:
            return False
        attr = self.d.choice(free)
        present = sorted({self.objs[j].get(attr) for j in self._matching(f)}, key=VALUES[attr].index)
        value = self.d.choice(present) if self.d.random() < 0.7 else self.d.choice(VALUES[attr])
        program = {"op": "count", "filter": {**f, attr: value}, "added": attr}
        return self._add(question_text(program, "group"), answer_of(program, self.scene, {}), "count", "group",
                         i - 1, program, None)

    # -- distance >= 2: the far past of the dialogue is needed
    def t_far(self, i: int) -> bool:
        """ "What size is the red thing we talked about earlier?": ambiguous in the image
        (two red things or more), unique among the objects the dialogue was about."""
        fresh, stale = [], []  # asking an attribute the dialogue has not given yet / has given
        for o, seen in self.last.items():
            if seen > i - 2:
                continue
            for form in FAR_FORMS:
                if not all(a in self.known[o] for a in form):
                    continue
                desc = self._desc(o, form)
                m = self._matching(desc)
                if len(m) < 2 or sum(p in self.last for p in m) != 1:
                    continue
                for attr in ATTRIBUTES:
                    program = {"op": "query", "attr": attr, "target": o, "desc": desc}
                    if attr not in desc and (o, attr) not in self.far_asked:
                        (stale if attr in self.known[o] else fresh).append(program)
        if not (fresh or stale):
            return False
        program = self.d.choice(fresh or stale)
        o = program["target"]
        self.far_asked.add((o, program["attr"]))
        return self._add(question_text(program, "far"), answer_of(program, self.scene, {}), "attribute", "far",
                         self.last[o], program, o, (program["attr"],))

    def t_statement(self, i: int) -> bool:
        if len(self.names) >= MAX_NAMES or i > self.rounds - 2:
            return False  # no room left to ask about the name
        cands = [o for o in range(len(self.objs)) if o not in self.named and self.unique[o]
                 and len(self.unique[o][0]) <= 2]
        if not cands:
            return False
        o = self.d.choice(cands)
        desc = self._short_desc(o, None)
        name = self.d.choice([n for n in NAMES if n not in self.names])
        program = {"op": "name", "target": o, "desc": desc, "name": name}
        self.names[name] = (o, desc, i)
        self.named[o] = name
        return self._add(question_text(program, "none"), "OK.", "statement", "none", None, program, o, desc,
                         scored=False)

    def t_chat(self, i: int) -> bool:
        if any(rd["family"] == "chat" for rd in self.records):
            return False  # at most one per dialogue
        kind = self.d.choice(sorted(CHAT))
        program = {"op": "chat", "kind": kind, "text": self.d.choice(CHAT[kind][0])}
        return self._add(program["text"], CHAT[kind][1], "chat", "none", None, program, None, scored=False)

    def t_memory(self, i: int) -> bool:
        cands = [n for n, (_, _, r) in self.names.items() if i - r >= 2 and n not in self.recalled]
        if not cands:
            return False
        name = self.d.choice(cands)
        o, desc, r = self.names[name]
        self.recalled.add(name)
        program = {"op": "recall", "target": o, "desc": desc}
        return self._add(question_text(program, "memory"), name, "memory", "memory", r, program, o)

    def t_name_attribute(self, i: int) -> bool:
        cands = []
        for name, (o, desc, r) in self.names.items():
            for attr in ATTRIBUTES:
                if attr not in desc:  # the name alone does not answer it: the image is needed too
                    program = {"op": "query", "attr": attr, "target": o, "name": name}
                    if question_text(program, "name") not in self.asked:
                        cands.append((program, r))
        if not cands:
            return False
        program, r = self.d.choice(cands)
        return self._add(question_text(program, "name"), answer_of(program, self.scene, {}), "attribute", "name",
                         r, program, program["target"], (program["attr"],))

    def run(self) -> list[dict]:
        self.caption()
        for i in range(1, self.rounds + 1):
            for t in self.d.weighted_order(TEMPLATE_WEIGHTS):
                if getattr(self, f"t_{t}")(i):
                    break
            else:
                self.t_count(i, allow_repeat=True)  # always possible
        return self.records


def generate_dialogue(scene: Scene, draws: Draws, rounds: int = 8) -> list[dict]:
    """The round records (caption + `rounds` rounds) of one dialogue about `scene`."""
    return _Dialogue(scene, draws, rounds).run()
