"""Drawing a media dialogue: the two kinds (motion, mixed; media.py describes them) put together from the
families of questions, which share one DialogueState (media_state.py):

- media_clips.ClipQuestions: the clip, its caption and the questions on how its shapes move;
- media_beeps.BeepQuestions: beeps and the questions on their number, pitch and order;
- media_pictures.PictureQuestions: a second picture, the questions comparing the two, and "that many".

A follow-up round tries the feasible templates of the media shown so far in a weighted random order.
"""

from __future__ import annotations

from mmdialog.data.worlds.shapes.dialogue import generate_dialogue
from mmdialog.data.worlds.shapes.media import MODALITIES
from mmdialog.data.worlds.shapes.media_beeps import BEEP_WEIGHTS, BeepQuestions
from mmdialog.data.worlds.shapes.media_clips import MOTION_WEIGHTS, ClipQuestions
from mmdialog.data.worlds.shapes.media_pictures import CROSS_WEIGHT, PICTURE_WEIGHTS, PictureQuestions
from mmdialog.data.worlds.shapes.media_state import DialogueState
from mmdialog.data.worlds.shapes.motion import sample_clip
from mmdialog.data.worlds.shapes.scene import Draws, sample_scene

# The follow-up weights a later turn's new media add, per modality ("What shape is the red thing?" on a
# clip only in motion dialogues: with pictures around it would be ambiguous).
FOLLOW_UPS = {"image": PICTURE_WEIGHTS, "audio": BEEP_WEIGHTS,
              "video": {t: w for t, w in MOTION_WEIGHTS.items() if t != "clip_attr"}}


class _MediaDialogue:
    def __init__(self, draws: Draws, image_size: int, rounds: int, exclude_pairs=None):
        self.s = DialogueState(draws, image_size, rounds, exclude_pairs)
        self.clips, self.beeps, self.pictures = ClipQuestions(self.s), BeepQuestions(self.s), PictureQuestions(self.s)
        self.templates = {**self.clips.templates, **self.beeps.templates, **self.pictures.templates}
        self.openers = {"image": self.pictures.open, "audio": self.beeps.open, "video": self.clips.open}

    def motion(self) -> list[dict]:
        s = self.s
        self.clips.caption(sample_clip(s.d, s.size, exclude_pairs=s.exclude))
        for i in range(1, s.rounds + 1):
            self._follow_up(i, MOTION_WEIGHTS, fallback=self.clips.fallback)
        return s.records

    def mixed(self, modalities) -> list[dict]:
        s = self.s
        scene = sample_scene(s.d, s.size, exclude_pairs=s.exclude)
        segments = [x for x in MODALITIES if x in modalities]
        k = 1 if len(segments) == 1 or s.rounds < 5 or s.d.random() < 0.5 else 2
        chosen = s.d.sample(segments, k)
        a = 1 + s.d.below(min(3, s.rounds - 2 * k))  # picture-world rounds before the new media
        base = generate_dialogue(scene, s.d, a)
        s.show("image", scene, 0)
        for rd in base:
            needs = [] if rd["depends_on"] is None else [rd["depends_on"]]
            rd = dict(rd, needs=needs, media=[0] if rd["round"] == 0 else [])
            s.records.append(rd)
            s.focus.append(None)
        openers = [a + 1]
        if k == 2:
            openers.append(a + 3 + s.d.below(s.rounds - a - 3))  # a follow-up in between and after
        weights: dict[str, float] = {}
        for i in range(a + 1, s.rounds + 1):
            if i in openers:
                seg = chosen[openers.index(i)]
                self.openers[seg](i)
                weights.update(FOLLOW_UPS[seg])
                weights["that_many"] = CROSS_WEIGHT
                continue
            self._follow_up(i, weights, fallback=self.pictures.fallback)
        return s.records

    def _follow_up(self, i: int, weights: dict[str, float], fallback) -> None:
        for t in self.s.d.weighted_order(weights):
            if self.templates[t](i):
                return
        fallback(i)


def generate_media_dialogue(kind: str, draws: Draws, *, image_size: int = 64, rounds: int = 8,
                            modalities=MODALITIES, exclude_pairs=None) -> tuple[list[dict], list[dict]]:
    """(media, rounds) of one dialogue: media[i] = {"type", "round", "value": Scene | Beeps | Clip}.
    exclude_pairs: (shape, colour) pairs no picture or clip shows (the held-out combos, heldout.py)."""
    g = _MediaDialogue(draws, image_size, rounds, exclude_pairs)
    records = g.motion() if kind == "motion" else g.mixed(modalities)
    return g.s.media, records
