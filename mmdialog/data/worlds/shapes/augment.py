"""Augmentation of world dialogues that keeps every label true.

    flip          the image mirrored left-right, and with it the scene (columns, x) and every "left" <-> "right"
                  in the questions, answers and programs: check_record proves the flipped record right
    cut history   the early question rounds 1..k cut (k up to half of them; the image round stays); an answer that
                  needs a cut round, directly or through the round it leans on, is no longer trained
    distractors   one or two count questions about the scene, answered from it, inserted before rounds that do
                  not refer to the round just before them

    colour        two colours swapped in the scene, the image and every round; never in a dialogue that asks a
                  colour, never into a held-out shape-colour pair (variants.py)
    paraphrase    questions reworded with training templates of the same program, never the held-out wordings
                  of the test_paraphrase split (variants.py)

AugmentedWorldDataset applies them on every draw, with random streams fixed by (seed, epoch, index): the same
draw after a resume, whatever ran before. Colour and paraphrase draw from streams of their own, so turning them
on leaves the flip / cut / distractor draws as they were.
"""

from __future__ import annotations

import copy
import random
import re
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from mmdialog.data.conversation import Conversation, Image
from mmdialog.data.processor import Example, Processor
from mmdialog.data.worlds.shapes.dialogue import COUNT_ATTRIBUTES, plural
from mmdialog.data.worlds.shapes.io import heldout_info
from mmdialog.data.worlds.shapes.scene import GRID, VALUES, Scene, quadrant
from mmdialog.data.worlds.shapes.variants import draw_colour_swap, paraphrase_for_training, swap_pixels
from mmdialog.objectives.lm import IGNORE_INDEX

_SIDES = re.compile(r"\b(left|right|Left|Right|LEFT|RIGHT)\b")
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}


def swap_sides(text: str) -> str:
    return _SIDES.sub(lambda m: _SWAP[m.group(1)], text)


def _swap_all(x):
    """Every string inside x (dicts, lists) with left and right swapped."""
    if isinstance(x, str):
        return swap_sides(x)
    if isinstance(x, dict):
        return {k: _swap_all(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_swap_all(v) for v in x]
    return x


def flip_record(record: dict) -> dict:
    """The record of the mirrored image: scene columns and x mirrored, left and right swapped in every round."""
    out = copy.deepcopy(record)
    scene = out["scene"]
    for o in scene["objects"]:
        o["col"] = GRID - 1 - o["col"]
        o["x"] = scene["size"] - 1 - o["x"]
        o["position"] = quadrant(o["row"], o["col"])
    # keep the scene's objects in cell order (row-major), as generated
    scene["objects"] = sorted(scene["objects"], key=lambda o: (o["row"], o["col"]))
    order = {(o["row"], GRID - 1 - o["col"]): i for i, o in enumerate(scene["objects"])}
    old = {i: order[(o["row"], o["col"])] for i, o in enumerate(record["scene"]["objects"])}
    out["rounds"] = [_renumber(_swap_all(rd), old) for rd in out["rounds"]]
    return out


def _renumber(rd: dict, old_to_new: dict[int, int]) -> dict:
    """Programs name objects by their index in the scene; sorting the mirrored scene moved them."""
    p = rd.get("program", {})
    for key in ("target", "targets", "object", "objects"):
        if key in p:
            p[key] = [old_to_new[i] for i in p[key]] if isinstance(p[key], list) else old_to_new[p[key]]
    return rd


def flip_pixels(pixels: np.ndarray) -> np.ndarray:
    """(H, W, 3) -> the image mirrored left-right."""
    return np.ascontiguousarray(pixels[:, ::-1])


def augment_rounds(record: dict, rng: random.Random, p_cut: float = 0.5, p_distract: float = 0.5) -> list[dict]:
    """The record's rounds with early rounds cut and distractor rounds inserted (see the module docstring).
    Each returned round has "train": False where the answer needs a round that was cut."""
    rounds = [dict(rd, train=True) for rd in record["rounds"]]
    n = len(rounds) - 1  # question rounds after the caption
    if n >= 2 and rng.random() < p_cut:
        k = rng.randint(1, max(1, n // 2))
        cut = set(range(1, k + 1))
        rounds = [rd for rd in rounds if rd["round"] not in cut]
        trainable = {}
        for rd in rounds:  # in order: a round is answerable if what it leans on is there and answerable
            dep = rd["depends_on"]
            rd["train"] = dep is None or (dep not in cut and trainable[dep])
            trainable[rd["round"]] = rd["train"]
    if rng.random() < p_distract:
        scene = Scene.from_dict(record["scene"])
        for _ in range(rng.randint(1, 2)):
            # before a round that does not lean on the round before it (or at the end)
            spots = [i for i in range(1, len(rounds) + 1) if i == len(rounds) or rounds[i]["distance"] != 1]
            at = rng.choice(spots)
            attrs = rng.sample(COUNT_ATTRIBUTES, rng.randint(1, 2))
            base = rng.choice(scene.objects)
            f = {a: base.get(a) if rng.random() < 0.7 else rng.choice(VALUES[a]) for a in attrs}
            rounds.insert(at, {"round": -1, "question": f"How many {plural(f)} are there?",
                               "answer": str(len(scene.matching(f))), "depends_on": None, "distance": 0,
                               "train": True})
    return rounds


class AugmentedWorldDataset(Dataset):
    """World records processed on every draw, each draw flipped / cut / given distractors with the configured
    probabilities (train.augment). Rounds whose answer lost what it needs are not trained (labels -100)."""

    def __init__(self, records: list[dict], world: str | Path, processor: Processor, *, flip: float = 0.0,
                 cut_history: float = 0.0, distractors: float = 0.0, colour: float = 0.0, paraphrase: float = 0.0,
                 seed: int = 0):
        self.records, self.world, self.processor = records, Path(world), processor
        self.flip, self.cut_history, self.distractors, self.seed = flip, cut_history, distractors, seed
        self.colour, self.paraphrase = colour, paraphrase
        self.heldout_pairs = [tuple(p) for p in heldout_info(self.world).get("pairs", [])]
        self.epoch = 0
        self.ids = [r["id"] for r in records]
        self.skipped: list = []
        tok = processor.tokenizer
        self.assistant_id, self.end_id = tok.role_ids["assistant"], tok.end_id

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.records)

    def rng(self, i: int) -> random.Random:
        return random.Random((self.seed * 1_000_003 + self.epoch) * 1_000_003 + i)

    def stream(self, i: int, name: str) -> random.Random:
        return random.Random(f"{self.seed}/{self.epoch}/{i}/{name}")  # str seeds hash the same in every process

    def draw(self, i: int) -> tuple[dict, list[dict], bool]:
        """(the record as drawn, its rounds with "train" flags, flipped?) for index i in this epoch; a record
        whose colours were swapped carries "colour_swap": [a, b]."""
        rng = self.rng(i)
        rec = self.records[i]
        if self.colour:
            rec = draw_colour_swap(rec, self.stream(i, "colour"), self.colour, self.heldout_pairs)
        if self.paraphrase:
            rec = paraphrase_for_training(rec, self.stream(i, "paraphrase"), self.paraphrase)
        flipped = rng.random() < self.flip
        if flipped:
            rec = flip_record(rec)
        return rec, augment_rounds(rec, rng, self.cut_history, self.distractors), flipped

    def __getitem__(self, i: int) -> Example:
        rec, rounds, flipped = self.draw(i)
        image = Image(path=str((self.world / rec["image"]).resolve()))
        if "colour_swap" in rec or flipped:
            pixels = image.load()
            if "colour_swap" in rec:
                pixels = swap_pixels(pixels, *rec["colour_swap"])
            image = Image(pixels=flip_pixels(pixels) if flipped else pixels)
        conv = Conversation(meta={"id": rec["id"]})
        for j, rd in enumerate(rounds):
            conv.add("user", *([image, rd["question"]] if j == 0 else [rd["question"]]))
            conv.add("assistant", rd["answer"])
        ex = self.processor(conv, where=f"conversation {rec['id']}")
        if all(rd["train"] for rd in rounds):
            return ex
        labels = ex.labels.clone()
        starts = (ex.input_ids == self.assistant_id).nonzero().squeeze(1).tolist()
        for start, rd in zip(starts, rounds):
            if not rd["train"]:
                end = start + int((ex.input_ids[start:] == self.end_id).nonzero()[0])
                labels[start:end + 1] = IGNORE_INDEX
        return Example(ex.input_ids, labels, ex.images, weights=ex.weights)

    def report(self) -> str:
        return (f"{len(self.records)} conversations, augmented on every draw (flip {self.flip:g}, cut history "
                f"{self.cut_history:g}, distractors {self.distractors:g}, colour {self.colour:g}, paraphrase "
                f"{self.paraphrase:g})")

