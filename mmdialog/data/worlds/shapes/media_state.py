"""What every family of media questions shares while a dialogue is drawn: the draws, the media shown so far,
the rounds written so far, and what each round was about (media_dialogue.py puts the families together)."""

from __future__ import annotations

from mmdialog.data.worlds.shapes.dialogue import COUNT_ATTRIBUTES
from mmdialog.data.worlds.shapes.media import answer_of, family_of, question_text
from mmdialog.data.worlds.shapes.scene import Draws, Scene


class DialogueState:
    """The state of one media dialogue being drawn, and the one way to add a round to it."""

    def __init__(self, draws: Draws, image_size: int, rounds: int, exclude_pairs=None):
        self.d, self.size, self.rounds, self.exclude = draws, image_size, rounds, exclude_pairs
        self.media: list[dict] = []  # {"type", "round", "value": Scene | Beeps | Clip}
        self.records: list[dict] = []
        self.focus: list[tuple[int, int] | None] = []  # (media index, object index) of clip objects
        self.last: dict[tuple[int, int], int] = {}
        self.known: dict[tuple[int, int], set[str]] = {}
        self.asked: set[str] = set()
        self.far_asked: set[tuple[int, int, str]] = set()

    def values(self) -> list:
        return [m["value"] for m in self.media]

    def show(self, kind: str, value, i: int) -> int:
        self.media.append({"type": kind, "round": i, "value": value})
        return len(self.media) - 1

    def round_of(self, m: int) -> int:
        return self.media[m]["round"]

    def media_needs(self, m: int, i: int) -> list[int]:
        """An earlier round that showed media m (none for round 0's media, always in the context)."""
        s = self.round_of(m)
        return [s] if 0 < s < i else []

    def ref(self, m: int, i: int) -> str:
        return "media" if self.media_needs(m, i) else "none"

    def first(self, kind: str) -> int | None:
        """The first media item of a type (the dialogue's clip or beeps), None before one is shown."""
        found = [k for k, m in enumerate(self.media) if m["type"] == kind]
        return found[0] if found else None

    def pictures(self) -> list[int]:
        return [k for k, m in enumerate(self.media) if m["type"] == "image"]

    def picture_name(self, m: int) -> str:
        pics = self.pictures()
        if len(pics) == 1:
            return "the picture"
        return "the first picture" if m == pics[0] else "the second picture"

    def object_filter(self, scene: Scene, k: int) -> dict:
        base = self.d.choice(scene.objects)
        return {a: base.get(a) for a in self.d.sample(COUNT_ATTRIBUTES, k)}

    def balanced(self, classes: dict[str, list[dict]]) -> dict | None:
        """A filter from a class drawn uniformly among the non-empty ones (so answers are balanced)."""
        keys = [k for k in classes if classes[k]]
        if not keys:
            return None
        return self.d.choice(classes[self.d.choice(keys)])

    def add(self, program: dict, ref: str, needs, *, shown=(), focus=None, learned=(), scored=True,
            allow_repeat: bool = False) -> bool:
        """Append the round of `program` (False, and nothing added, where a scored question was asked before)."""
        i = len(self.records)
        q = question_text(program, ref)
        if scored and not allow_repeat and q in self.asked:
            return False
        needs = sorted(set(needs))
        dep = needs[0] if needs else None
        self.records.append({
            "round": i, "question": q, "answer": answer_of(program, self.values()),
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
