"""A second picture brought by a later turn ("Now look at this picture: ..."), the questions on either
picture, the comparisons of the two, and "that many" across media (after a count of new media)."""

from __future__ import annotations

from mmdialog.data.worlds.shapes.media import FILTERS, LEADS, MORE_ANSWERS, unique_descs
from mmdialog.data.worlds.shapes.media_state import DialogueState
from mmdialog.data.worlds.shapes.scene import ATTRIBUTES, VALUES, sample_scene

PICTURE_WEIGHTS = {"more": 1.0, "both": 0.8, "picture_count": 0.8, "picture_attr": 0.8}
CROSS_WEIGHT = 3.0  # "that many": only right after a count of new media, so it gets a large weight


class PictureQuestions:
    def __init__(self, state: DialogueState):
        self.s = state
        self.templates = {t: getattr(self, f"t_{t}") for t in (*PICTURE_WEIGHTS, "that_many")}

    def open(self, i: int) -> None:
        s = self.s
        scene = sample_scene(s.d, s.size, exclude_pairs=s.exclude)
        m = s.show("image", scene, i)
        f = {} if s.d.random() < 0.4 else s.object_filter(scene, 1)
        s.add({"op": "picture_count", "media": m, "filter": f, "lead": LEADS["picture_count"]}, "none", [],
              shown=[m])

    def fallback(self, i: int) -> None:
        """Always possible: a count about the first picture, asked again if need be."""
        s = self.s
        m = s.pictures()[0]
        scene = s.media[m]["value"]
        program = {"op": "picture_count", "media": m, "filter": s.object_filter(scene, 1),
                   "picture": s.picture_name(m)}
        s.add(program, "none", [], allow_repeat=True)

    def _second(self) -> int | None:
        pics = self.s.pictures()
        return pics[1] if len(pics) > 1 else None

    def _compare(self, op: str, i: int, classes: dict[str, list[dict]], class_of) -> bool:
        """A comparison of the two pictures on a filter drawn with balanced answers (class_of(na, nb))."""
        s = self.s
        b = self._second()
        a = s.pictures()[0]
        sa, sb = s.media[a]["value"], s.media[b]["value"]
        for f in FILTERS:
            na, nb = len(sa.matching(f)), len(sb.matching(f))
            if na or nb:
                classes[class_of(na, nb)].append(f)
        f = s.balanced(classes)
        return f is not None and s.add({"op": op, "filter": f, "pictures": [a, b]}, "media", s.media_needs(b, i))

    def t_more(self, i: int) -> bool:
        return self._compare("more", i, {k: [] for k in MORE_ANSWERS},
                             lambda na, nb: MORE_ANSWERS[0] if na > nb else MORE_ANSWERS[1] if nb > na
                             else MORE_ANSWERS[2])

    def t_both(self, i: int) -> bool:
        return self._compare("both", i, {"yes": [], "no": []}, lambda na, nb: "yes" if na and nb else "no")

    def t_picture_count(self, i: int) -> bool:
        s = self.s
        m = s.d.choice(s.pictures())
        scene = s.media[m]["value"]
        f = s.object_filter(scene, 1 + s.d.below(2)) if s.d.random() < 0.7 else \
            {"shape": s.d.choice(VALUES["shape"])}
        program = {"op": "picture_count", "media": m, "filter": f, "picture": s.picture_name(m)}
        return s.add(program, s.ref(m, i), s.media_needs(m, i))

    def t_picture_attr(self, i: int) -> bool:
        s = self.s
        m = s.d.choice(s.pictures())
        scene = s.media[m]["value"]
        o, attr = s.d.below(len(scene.objects)), s.d.choice(ATTRIBUTES)
        descs = unique_descs(scene.objects, o, attr)
        if not descs:
            return False
        program = {"op": "picture_attr", "media": m, "target": o, "attr": attr, "desc": s.d.choice(descs),
                   "picture": s.picture_name(m)}
        return s.add(program, s.ref(m, i), s.media_needs(m, i))

    def t_that_many(self, i: int) -> bool:
        """Across media: "that many" takes the number the previous round answered about new media."""
        s = self.s
        prev = s.records[i - 1]
        op = prev["program"]["op"]
        if op not in ("beep_count", "move_count", "picture_count"):
            return False
        pics = s.pictures()
        if op == "picture_count":
            others = [p for p in pics if p != prev["program"]["media"]]
            if not others:
                return False
            m = others[0]
        else:
            m = s.d.choice(pics)
        n = int(prev["answer"])
        scene = s.media[m]["value"]
        classes = {"yes": [], "no": []}
        for f in FILTERS:
            count = len(scene.matching(f))
            classes["yes" if count == n else "no"].append(f)
        f = s.balanced(classes)
        program = {"op": "that_many", "media": m, "filter": f, "picture": s.picture_name(m), "number": n}
        return s.add(program, "count", [i - 1, *s.media_needs(m, i)])
