"""Small dataset files in the three formats, written by the tests: the same dialogues in LLaVA, ShareGPT and
OpenAI form, with per-turn labels (meta.rounds and labels on the turn itself), candidates, a system turn and
images in later turns; plus records that are bad in the ways the evaluation must report."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

# (system, [(user text, images in this turn, gold reply, labels)], candidates per assistant turn or None)
DIALOGUES = [
    (None, [("How many shapes are there?", ["a.png"], "two", {"distance": 0, "template": "count"}),
            ("What colour is the big one?", [], "red", {"distance": 1, "template": "attribute"}),
            ("And in this picture, how many?", ["b.png"], "three", {"distance": 0, "template": "count"})],
     [["two", "three", "red", "four"], None, ["one", "three", "blue"]]),
    ("You answer in one word.", [("Is there a circle?", ["b.png"], "yes", {"distance": 0, "template": "exist"}),
                                  ("Which colour is it?", [], "blue", {"distance": 1, "template": "attribute"})],
     None),
    (None, [("Describe it.", ["c.png"], "a green square", {}),
            ("What was the first thing I asked?", [], "to describe it", {"distance": 1}),
            ("Is the square on the left?", [], "no", {"distance": 7, "template": "exist"}),
            ("Now this one: what shape?", ["a.png"], "triangle", {"distance": 0, "template": "attribute"})],
     [None, None, ["yes", "no"], ["circle", "square", "triangle"]]),
]

IMAGES = ("a.png", "b.png", "c.png")


def write_images(root: Path) -> None:
    for i, name in enumerate(IMAGES):
        pixels = np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        PILImage.fromarray(pixels).save(root / name)


def _meta(turns, candidates, labels_on_turns: bool) -> dict:
    meta = {}
    if not labels_on_turns:
        meta["rounds"] = [labels for _, _, _, labels in turns]
    if candidates is not None:
        meta["candidates"] = candidates
    return meta


def to_llava(system, turns, candidates, rid, labels_on_turns=False) -> dict:
    msgs, images = ([{"from": "system", "value": system}] if system else []), []
    for text, imgs, gold, labels in turns:
        msgs.append({"from": "human", "value": "<image>" * len(imgs) + text})
        msgs.append({"from": "gpt", "value": gold, **({"labels": labels} if labels_on_turns else {})})
        images += imgs
    return {"id": rid, "image": images, "conversations": msgs, "meta": _meta(turns, candidates, labels_on_turns)}


def to_sharegpt(system, turns, candidates, rid, labels_on_turns=False) -> dict:
    msgs, images = [], []
    for text, imgs, gold, labels in turns:
        msgs.append({"role": "user", "content": "<image>" * len(imgs) + text})
        msgs.append({"role": "assistant", "content": gold, **({"labels": labels} if labels_on_turns else {})})
        images += imgs
    rec = {"id": rid, "messages": msgs, "images": images, "meta": _meta(turns, candidates, labels_on_turns)}
    if system:
        rec["system"] = system
    return rec


def to_openai(system, turns, candidates, rid, labels_on_turns=False) -> dict:
    msgs = [{"role": "system", "content": system}] if system else []
    for text, imgs, gold, labels in turns:
        content = [{"type": "image_url", "image_url": {"url": p}} for p in imgs] + [{"type": "text", "text": text}]
        msgs.append({"role": "user", "content": content})
        msgs.append({"role": "assistant", "content": gold, **({"labels": labels} if labels_on_turns else {})})
    return {"id": rid, "messages": msgs, "meta": _meta(turns, candidates, labels_on_turns)}


WRITERS = {"llava": to_llava, "sharegpt": to_sharegpt, "openai": to_openai}


def write_file(path: Path, fmt: str, dialogues=DIALOGUES, *, labels_on_turns=False, extra_lines=()) -> Path:
    """One record per line (JSON Lines), the dialogues first, then the raw extra lines."""
    lines = [json.dumps(WRITERS[fmt](s, t, c, f"d{i}", labels_on_turns)) for i, (s, t, c) in enumerate(dialogues)]
    path.write_text("\n".join(lines + list(extra_lines)) + "\n")
    return path


def bad_lines(fmt: str) -> list[str]:
    """Four bad records, in this order: 3 labels for 2 assistant turns; a distance that is not a number; a missing
    image; candidates without the gold reply."""
    w = WRITERS[fmt]
    ok = [("Is it red?", ["a.png"], "yes", {"distance": 0}), ("And big?", [], "no", {"distance": 1})]
    count = w(None, ok, None, "bad-count")
    count["meta"]["rounds"].append({"distance": 2})
    word = w(None, [ok[0], ("And big?", [], "no", {"distance": "far"})], None, "bad-number")
    missing = w(None, [("Is it red?", ["nowhere.png"], "yes", {"distance": 0})], None, "bad-media")
    cands = w(None, ok, [["no", "maybe"], None], "bad-candidates")
    return [json.dumps(r) for r in (count, word, missing, cands)]
