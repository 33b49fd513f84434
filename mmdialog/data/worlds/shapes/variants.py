"""Label-true variants of a world record for training: colours swapped, questions reworded.

colour swap   two colours exchanged everywhere: in the scene, in the image (every pixel of exactly one
              colour's RGB becomes the other's: renders are flat colours, so this is the image of the
              swapped scene), and in every question, answer and program. A swap is a bijection, so every
              count, uniqueness and reference stays what it was. Following the issue's rule that colour
              changes are never applied to colour questions, a dialogue that asks a colour (a query round
              on the colour attribute, whose answer is read off the pixels alone) is left unchanged; rounds
              that only name colours (filters, descriptions, the caption) are rewritten consistently. A swap
              that would put a held-out shape-colour pair (world.json "heldout.pairs", the test_combos split)
              into the image is never drawn, so that split stays unseen.
paraphrase    each question asked in one of TRAIN wordings of its program: never the canonical
              question_text and never one of heldout.paraphrases, the wordings of the test_paraphrase split,
              so evaluation there stays honest. The caption question stays (the format fixes it).

`check_variant` proves a variant right with the world's checker: the wordings are the ones of each round's
program, and check_record replays the programs and answers against the (swapped) scene.
"""

from __future__ import annotations

import copy
import random
import re

import numpy as np

from mmdialog.data.worlds.shapes.check import check_record
from mmdialog.data.worlds.shapes.dialogue import question_text
from mmdialog.data.worlds.shapes.scene import COLOURS
from mmdialog.data.worlds.shapes.wording import is_wording, train_paraphrases, wordings  # noqa: F401 (re-exported)
from mmdialog.errors import MMDialogError

TRAIN_TEMPLATES = "train-paraphrase"  # the record's "templates" after paraphrase_for_training
_COLOUR_WORDS = re.compile(r"\b(" + "|".join(COLOURS) + r")\b", re.IGNORECASE)  # questions may be typed in any case


def _same_case(new: str, old: str) -> str:
    return new.upper() if old.isupper() else new.capitalize() if old[0].isupper() else new


# ----------------------------------------------------------------------------- colour swap

def asks_colour(record: dict) -> bool:
    return any(rd["program"]["op"] == "query" and rd["program"]["attr"] == "colour" for rd in record["rounds"])


def colour_swaps(record: dict, forbidden_pairs=()) -> list[tuple[str, str]]:
    """The (a, b) swaps that may be applied to the record: a in its scene, b any other colour, none that puts a
    forbidden (shape, colour) pair in the scene; [] for a dialogue that asks a colour."""
    if asks_colour(record):
        return []
    forbidden = {tuple(p) for p in forbidden_pairs}
    objs = record["scene"]["objects"]
    present = sorted({o["colour"] for o in objs}, key=list(COLOURS).index)
    out = []
    for a in present:
        for b in COLOURS:
            if b == a:
                continue
            swap = {a: b, b: a}
            if any((o["shape"], swap[o["colour"]]) in forbidden for o in objs if o["colour"] in swap):
                continue
            out.append((a, b))
    return out


def _swap_values(x, swap: dict[str, str]):
    if isinstance(x, str):
        return _COLOUR_WORDS.sub(lambda m: _same_case(swap.get(m.group(1).lower(), m.group(1).lower()), m.group(1)), x)
    if isinstance(x, dict):
        return {k: _swap_values(v, swap) for k, v in x.items()}
    if isinstance(x, list):
        return [_swap_values(v, swap) for v in x]
    return x


def swap_colours(record: dict, a: str, b: str) -> dict:
    """The record with colours a and b exchanged in the scene and in every round (words and programs)."""
    if asks_colour(record):
        raise MMDialogError(f"{record.get('id')}: colour changes are never applied to a dialogue that asks a colour")
    swap = {a: b, b: a}
    out = copy.deepcopy(record)
    for o in out["scene"]["objects"]:
        o["colour"] = swap.get(o["colour"], o["colour"])
    out["rounds"] = [_swap_values(rd, swap) for rd in out["rounds"]]
    out["colour_swap"] = [a, b]
    return out


def swap_pixels(pixels: np.ndarray, a: str, b: str) -> np.ndarray:
    """(H, W, 3) uint8 with the pixels of exactly colour a's RGB and of colour b's RGB exchanged."""
    ca, cb = np.array(COLOURS[a], np.uint8), np.array(COLOURS[b], np.uint8)
    is_a, is_b = (pixels == ca).all(-1), (pixels == cb).all(-1)
    out = pixels.copy()
    out[is_a], out[is_b] = cb, ca
    return out


def draw_colour_swap(record: dict, rng: random.Random, p: float, forbidden_pairs=()) -> dict:
    """With probability p (and when allowed) the record with two colours swapped, else the record itself."""
    if not p or rng.random() >= p:
        return record
    options = colour_swaps(record, forbidden_pairs)
    return swap_colours(record, *rng.choice(options)) if options else record


# ----------------------------------------------------------------------------- training paraphrases

def paraphrase_for_training(record: dict, rng: random.Random, p: float) -> dict:
    """The record with each question (but the caption's), with probability p, in one of its training wordings."""
    if not p:
        return record
    rounds, changed = [], False
    for rd in record["rounds"]:
        if rd["program"]["op"] not in ("caption", "chat") and rng.random() < p:
            rd = {**rd, "question": rng.choice(train_paraphrases(rd["program"], rd["ref"]))}
            changed = True
        rounds.append(rd)
    return {**record, "rounds": rounds, "templates": TRAIN_TEMPLATES} if changed else record


# ----------------------------------------------------------------------------- proof

def check_variant(record: dict) -> None:
    """Prove a variant right: every question is its program's canonical or training wording (never a held-out
    one), and the world's check_record accepts the record with the canonical wordings (answers, references,
    dependencies re-derived from its scene)."""
    canonical = []
    for i, rd in enumerate(record["rounds"]):
        p, ref = rd["program"], rd["ref"]
        if not is_wording(rd["question"], p, ref):
            raise MMDialogError(f"{record.get('id')} round {i}: {rd['question']!r} is none of {wordings(p, ref)!r}")
        canonical.append({**rd, "question": question_text(p, ref)})
    check_record({k: v for k, v in record.items() if k != "templates"} | {"rounds": canonical})
