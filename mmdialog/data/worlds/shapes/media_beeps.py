"""Beeps brought by a later turn ("Now listen: how many beeps are there?") and the questions on them."""

from __future__ import annotations

from mmdialog.data.worlds.shapes.beeps import sample_beeps
from mmdialog.data.worlds.shapes.media import LEADS
from mmdialog.data.worlds.shapes.media_state import DialogueState

BEEP_WEIGHTS = {"beep_count": 1.0, "beep_pitch": 1.0, "beep_order": 0.6}


class BeepQuestions:
    def __init__(self, state: DialogueState):
        self.s = state
        self.templates = {"beep_count": self.t_beep_count, "beep_pitch": self.t_beep_pitch,
                          "beep_order": self.t_beep_order}

    def open(self, i: int) -> None:
        s = self.s
        m = s.show("audio", sample_beeps(s.d), i)
        s.add({"op": "beep_count", "media": m, "pitch": None, "lead": LEADS["beep_count"]}, "none", [], shown=[m])

    def t_beep_count(self, i: int) -> bool:
        s = self.s
        m = s.first("audio")
        p = s.d.choice(("high", "low"))
        return s.add({"op": "beep_count", "media": m, "pitch": p}, s.ref(m, i), s.media_needs(m, i))

    def t_beep_pitch(self, i: int) -> bool:
        s = self.s
        m = s.first("audio")
        n = len(s.media[m]["value"])
        k = s.d.choice(list(range(n)) + ([-1] if n > 1 else []))
        return s.add({"op": "beep_pitch", "media": m, "index": k}, s.ref(m, i), s.media_needs(m, i))

    def t_beep_order(self, i: int) -> bool:
        s = self.s
        m = s.first("audio")
        if len(s.media[m]["value"]) < 2:
            return False
        program = {"op": "beep_order", "media": m, "relation": s.d.choice(("higher", "lower"))}
        return s.add(program, s.ref(m, i), s.media_needs(m, i))
