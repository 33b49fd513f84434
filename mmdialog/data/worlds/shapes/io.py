"""The shapes world on disk: generate it, load a split with validation, turn a record into a Conversation.

Layout (docs/world.md): world.json, {train,val,test}.jsonl, images/<split>/<id>.png.
"""

from __future__ import annotations

import contextlib
import json
import math
import multiprocessing
import os
import re
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from mmdialog.data.conversation import Conversation, Image, Text
from mmdialog.data.worlds.shapes.dialogue import (
    CAPTION_QUESTION, CAPTION_WORDINGS, FAMILIES, MAX_NAMES, NAMES, REFS, TEMPLATE_WEIGHTS, generate_dialogue,
)
from mmdialog.data.worlds.shapes.heldout import (
    DESCRIPTIONS, HELDOUT_SPLITS, KINDS, SPLIT_IDS, heldout_pairs, paraphrase_record, parse_kinds,
)
from mmdialog.data.worlds.shapes.media_io import generate_media, parse_modalities
from mmdialog.data.worlds.shapes.render import encode_png, render
from mmdialog.data.worlds.shapes.wording import PHRASINGS, is_wording, ordinary
from mmdialog.data.worlds.shapes.scene import (
    COLOURS, GRID, MAX_OBJECTS, MIN_OBJECTS, POSITIONS, SHAPES, SIZES, Draws, check_image_size, sample_scene,
)
from mmdialog.errors import MMDialogError

FORMAT = "mmdialog-shapes"
VERSION = 2  # 2 (2026-12-07): total counts and caption wordings; recipes regenerate a world of another version
SPLITS = ("train", "val", "test")


def make_dialogue(seed: int, split: str, index: int, *, image_size: int = 64, rounds: int = 8,
                  exclude_pairs=None, require_pairs=None, paraphrase: bool = False,
                  phrasing: str = "ordinary") -> tuple[dict, PILImage.Image]:
    """One record and its image, in memory. Depends only on (seed, split, index, image_size, rounds) and
    the held-out options (heldout.py; all off by default).

    Each dialogue draws from its own generator, seeded with [seed, split number, index]:
    the files do not depend on generation order, and a smaller world's splits are
    prefixes of a larger one's with the same seed.
    """
    if split not in SPLIT_IDS:
        raise MMDialogError(f"unknown split {split!r}; the shapes world has {list(SPLIT_IDS)}")
    draws = Draws(np.random.default_rng([seed, SPLIT_IDS[split], index]))
    scene = sample_scene(draws, image_size, exclude_pairs=exclude_pairs, require_pairs=require_pairs)
    rid = f"{split}-{index:05d}"
    record = {"id": rid, "image": f"images/{split}/{rid}.png", "scene": scene.to_dict(),
              "rounds": generate_dialogue(scene, draws, rounds)}
    if paraphrase:  # its own generator: the scene and the programs stay those of the unparaphrased draw
        record = paraphrase_record(record, Draws(np.random.default_rng([seed, SPLIT_IDS[split], index, 1])))
    elif phrasing == "ordinary":  # as people type (wording.py), drawn apart: the programs stay the same
        draws = Draws(np.random.default_rng([seed, SPLIT_IDS[split], index, 2]))
        record["rounds"] = [{**rd, "question": ordinary(rd["program"], rd["ref"], draws)} for rd in record["rounds"]]
    elif phrasing != "canonical":
        raise MMDialogError(f"phrasing must be one of {', '.join(PHRASINGS)}, got {phrasing!r}")
    return record, render(scene)


def split_counts(dialogues: int, splits=(0.8, 0.1, 0.1)) -> dict[str, int]:
    """Dialogues per split: val and test are rounded, train takes the rest."""
    if len(splits) != 3 or any(not (0 <= s <= 1) for s in splits) or not math.isclose(sum(splits), 1.0, abs_tol=1e-6):
        raise MMDialogError(f"splits must be three fractions (train, val, test) summing to 1, got {tuple(splits)}")
    val, test = round(dialogues * splits[1]), round(dialogues * splits[2])
    return {"train": dialogues - val - test, "val": val, "test": test}


def summarize(records) -> dict:
    """Counts and shares of the scored questions by distance (0, 1, 2, 3+), family and ref."""
    tally = _Tally()
    for rec in records:
        tally.add(rec["rounds"])
    return tally.summary()


class _Tally:
    def __init__(self):
        self.dist, self.fam, self.ref = Counter(), Counter(), Counter()

    def add(self, rounds: list[dict]) -> None:
        for rd in rounds:
            if rd["scored"]:
                self.dist[str(rd["distance"]) if rd["distance"] < 3 else "3+"] += 1
                self.fam[rd["family"]] += 1
                self.ref[rd["ref"]] += 1

    def summary(self) -> dict:
        total = sum(self.dist.values())

        def shares(c: Counter, keys) -> dict:
            return {k: round(c[k] / max(total, 1), 4) for k in keys}

        return {"questions": total,
                "by_distance": shares(self.dist, ("0", "1", "2", "3+")),
                "by_family": shares(self.fam, [f for f in FAMILIES if f not in ("caption", "statement", "chat")]),
                "by_ref": shares(self.ref, REFS)}


PARALLEL_FROM = 2000  # dialogues from which generate_world spreads the work over processes


def _dialogue_and_png(job: tuple) -> tuple[dict, bytes]:
    seed, split, i, image_size, opts = job
    record, image = make_dialogue(seed, split, i, image_size=image_size, **opts)
    return record, encode_png(image)


def _workers(total: int, workers: int | None) -> int:
    """Processes for generate_world: forked ones, on Linux only (spawned ones would re-run the caller's
    script, which a user's script without a __main__ guard does not survive); elsewhere one."""
    if sys.platform != "linux":
        return 1
    if workers is not None:
        return max(1, workers)
    if total < PARALLEL_FROM:
        return 1  # starting processes costs more than the work
    return min(len(os.sched_getaffinity(0)), 8)


def generate_world(out_dir, *, dialogues: int, seed: int, image_size: int = 64, rounds: int = 8,
                   splits=(0.8, 0.1, 0.1), progress: bool = True, held_out=(),
                   held_out_dialogues: int | None = None, long_rounds: int | None = None,
                   modalities=("image",), media_dialogues: int | None = None, phrasing: str = "ordinary",
                   workers: int | None = None) -> dict:
    """Write a world of `dialogues` dialogues to out_dir; the same arguments give the same bytes.

    workers: processes that draw and render the dialogues (every dialogue depends only on its seed, split and
    index, so any number writes the same files); default one per core from PARALLEL_FROM dialogues on.

    held_out: kinds of held-out test splits to add ("long", "combos", "paraphrase"; see heldout.py), each of
    held_out_dialogues dialogues (default: the test split's count); long_rounds: rounds of test_long
    (default and minimum: 2 x rounds). Without held_out the files are exactly those of earlier versions.

    modalities: with audio and/or video (e.g. ("image", "audio", "video")), or media_dialogues > 0, media
    dialogues are written too: WORLD/media/{train,val,test}.jsonl with pictures, beeps and clips in later
    turns (media_io.py; media_dialogues of them, default: as many as `dialogues`, split the same way).
    Without them the files are exactly those of earlier versions.

    phrasing: ordinary (questions in the wordings and surface forms people type, and a few turns not about
    the picture; wording.py) | canonical (every question in its template's words: question_text).

    Returns {"counts": {split: n}, "questions", "by_distance", "by_family", "by_ref", "seconds"}, plus
    "heldout": {split: n} with held-out splits.
    """
    from tqdm import tqdm

    _check_sizes(dialogues, seed, rounds)
    check_image_size(image_size)
    counts = split_counts(dialogues, splits)
    kinds = parse_kinds(held_out)
    n_held = counts["test"] if held_out_dialogues is None else held_out_dialogues
    long_rounds = 2 * rounds if long_rounds is None else long_rounds
    modalities = parse_modalities(modalities)
    with_media = modalities != ("image",) or bool(media_dialogues)
    _check_media(with_media, media_dialogues, rounds)
    _check_held_out(kinds, n_held, long_rounds, rounds)
    pairs = heldout_pairs(seed) if "combos" in kinds else None
    if phrasing not in PHRASINGS:
        raise MMDialogError(f"phrasing must be one of {', '.join(PHRASINGS)}, got {phrasing!r}")
    options = _split_options(kinds, rounds, long_rounds, pairs, phrasing)
    out = Path(out_dir)
    start = time.perf_counter()
    tally = _Tally()
    total = dialogues + n_held * len(kinds)
    n_workers = _workers(total, workers)
    pool = ProcessPoolExecutor(n_workers, mp_context=multiprocessing.get_context("fork")) if n_workers > 1 else None
    with tqdm(total=total, disable=not progress, desc="shapes world", unit="dialogue") as bar, \
            pool or contextlib.nullcontext():
        for split, opts in options.items():
            for record in _write_split_files(out, split, counts.get(split, n_held), seed, image_size, opts, pool):
                if split in SPLITS:
                    tally.add(record["rounds"])
                bar.update(1)
    stats = tally.summary()
    world = _world_json(seed, counts, image_size, rounds, splits, phrasing, stats)
    if with_media:  # only then, as with held-out splits
        world["media"] = generate_media(out, counts=split_counts(media_dialogues or dialogues, splits), seed=seed,
                                        image_size=image_size, rounds=rounds, modalities=modalities,
                                        exclude_pairs=pairs, progress=progress)
    if kinds:  # only then: a default world.json keeps its bytes
        world["heldout"] = _heldout_json(kinds, n_held, options, pairs)
    (out / "world.json").write_text(json.dumps(world, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    summary = {"counts": counts, **stats, "seconds": round(time.perf_counter() - start, 3)}
    if kinds:
        summary["heldout"] = {KINDS[k]: n_held for k in kinds}
    if with_media:
        summary["media"] = {"counts": world["media"]["counts"], **world["media"]["stats"]}
    return summary


def _check_sizes(dialogues, seed, rounds) -> None:
    if not isinstance(dialogues, int) or dialogues < 1:
        raise MMDialogError(f"dialogues must be a positive integer, got {dialogues!r}")
    if not isinstance(seed, int) or seed < 0:
        raise MMDialogError(f"seed must be a non-negative integer, got {seed!r}")
    if not isinstance(rounds, int) or rounds < 1:
        raise MMDialogError(f"rounds must be a positive integer, got {rounds!r}")


def _check_media(with_media: bool, media_dialogues, rounds: int) -> None:
    if media_dialogues is not None and (not isinstance(media_dialogues, int) or media_dialogues < 0):
        raise MMDialogError(f"media_dialogues must be a non-negative integer, got {media_dialogues!r}")
    if with_media and rounds < 3:
        raise MMDialogError(f"media dialogues need at least 3 question rounds, got rounds={rounds}")


def _check_held_out(kinds, n_held, long_rounds, rounds: int) -> None:
    if kinds and (not isinstance(n_held, int) or n_held < 1):
        raise MMDialogError(f"held_out_dialogues must be a positive integer, got {n_held!r}")
    if "long" in kinds and (not isinstance(long_rounds, int) or long_rounds < 2 * rounds):
        raise MMDialogError(f"long_rounds must be at least twice the training rounds (2 x {rounds}), got {long_rounds!r}")


def _split_options(kinds, rounds: int, long_rounds: int, pairs, phrasing: str) -> dict[str, dict]:
    """make_dialogue's options per split, train/val/test first, then the held-out splits of `kinds`."""
    options = {split: {"rounds": rounds, "exclude_pairs": pairs, "phrasing": phrasing} for split in SPLITS}
    options.update({KINDS[k]: {"rounds": long_rounds if k == "long" else rounds, "require_pairs": pairs if k == "combos" else None,
                               "paraphrase": k == "paraphrase", "phrasing": phrasing} for k in kinds})
    return options


def _write_split_files(out: Path, split: str, n: int, seed: int, image_size: int, opts: dict, pool):
    """Write the split's n dialogues (OUT/<split>.jsonl, OUT/images/<split>/) and yield each record once written;
    drawn by `pool`'s processes when there is one."""
    img_dir = out / "images" / split
    img_dir.mkdir(parents=True, exist_ok=True)
    ours = re.compile(rf"{split}-(\d+)\.png")
    for p in img_dir.iterdir():  # images of an earlier, larger world in the same place
        m = ours.fullmatch(p.name)
        if m and int(m[1]) >= n:
            p.unlink()
    jobs = ((seed, split, i, image_size, opts) for i in range(n))
    made = pool.map(_dialogue_and_png, jobs, chunksize=64) if pool else map(_dialogue_and_png, jobs)
    with open(out / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for record, png in made:  # in index order, whoever drew them
            (out / record["image"]).write_bytes(png)
            f.write(json.dumps(record, sort_keys=True) + "\n")
            yield record


def _world_json(seed: int, counts: dict, image_size: int, rounds: int, splits, phrasing: str, stats: dict) -> dict:
    """world.json of a world without media or held-out splits (those add their own sections)."""
    return {
        "format": FORMAT, "version": VERSION, "seed": seed, "counts": counts,
        "settings": {"image_size": image_size, "rounds": rounds, "splits": list(splits), "grid": GRID,
                     "phrasing": phrasing,
                     "objects": [MIN_OBJECTS, MAX_OBJECTS], "max_names": MAX_NAMES,
                     "template_weights": TEMPLATE_WEIGHTS},
        "vocabulary": {"shapes": list(SHAPES), "colours": {k: list(v) for k, v in COLOURS.items()},
                       "sizes": list(SIZES), "positions": list(POSITIONS), "names": list(NAMES),
                       "families": list(FAMILIES), "refs": list(REFS)},
        "stats": stats,
    }


def _heldout_json(kinds, n_held: int, options: dict, pairs) -> dict:
    heldout = {"splits": {KINDS[k]: {"count": n_held, "rounds": options[KINDS[k]]["rounds"],
                                     "description": DESCRIPTIONS[KINDS[k]]} for k in kinds}}
    if pairs:
        heldout["pairs"] = [list(p) for p in pairs]
    return heldout


def write_split(out_dir, split: str, count: int, *, seed: int, image_size: int = 64, rounds: int = 8,
                phrasing: str = "ordinary") -> Path:
    """Write one split alone (its JSONL and images) into out_dir, e.g. a fresh test sample drawn with another
    seed (`mmdialog eval --seeds`); the records are those generate_world writes for the same arguments."""
    out = Path(out_dir)
    (out / "images" / split).mkdir(parents=True, exist_ok=True)
    with open(out / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
        for i in range(count):
            record, image = make_dialogue(seed, split, i, image_size=image_size, rounds=rounds, phrasing=phrasing)
            (out / record["image"]).write_bytes(encode_png(image))
            f.write(json.dumps(record, sort_keys=True) + "\n")
    return out


def world_settings(world_dir) -> dict:
    """world.json's settings (image_size, rounds, ...) and seed; {} without a readable world.json."""
    try:
        w = json.loads((Path(world_dir) / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {**w.get("settings", {}), "seed": w.get("seed"), "counts": w.get("counts", {})}


def heldout_info(world_dir) -> dict:
    """world.json's "heldout" section ({} for a world without held-out splits or without world.json)."""
    try:
        return json.loads((Path(world_dir) / "world.json").read_text(encoding="utf-8")).get("heldout", {})
    except (OSError, ValueError):
        return {}


# ----------------------------------------------------------------------------- loading

_OBJECT_FIELDS = {"shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES, "row": range(GRID), "col": range(GRID),
                  "x": int, "y": int, "position": POSITIONS}
_ROUND_FIELDS = {"round": int, "question": str, "answer": str, "family": FAMILIES, "ref": REFS,
                 "depends_on": (int, type(None)), "distance": int, "scored": bool, "program": dict}


class _Bad(Exception):
    pass


def _check(value, want, what: str) -> None:
    """want: a type or tuple of types (isinstance; a bool is no int) or a collection of allowed values."""
    if isinstance(want, type) or (isinstance(want, tuple) and all(isinstance(w, type) for w in want)):
        types = want if isinstance(want, tuple) else (want,)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            names = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise _Bad(f"{what} should be {names}, got {value!r}")
    elif isinstance(value, bool) or value not in want:
        raise _Bad(f"{what} is {value!r}, not one of {list(want)}")


def _check_fields(obj, fields: dict, where: str) -> None:
    """Every field present with its type, or a _Bad naming `where` and the field."""
    if not isinstance(obj, dict):
        raise _Bad(f"{where} is not an object")
    for key, want in fields.items():
        if key not in obj:
            raise _Bad(f"{where} lacks field {key!r}")
        _check(obj[key], want, f"{where} field {key!r}")


def validate_record(record) -> None:
    """Raise MMDialogError (without a location) if a record does not follow the format (docs/world.md)."""
    try:
        _validate(record)
    except _Bad as e:
        raise MMDialogError(str(e)) from None


def _validate(rec) -> None:
    if not isinstance(rec, dict):
        raise _Bad(f"a record must be a JSON object, got {type(rec).__name__}")
    _check_fields(rec, {"id": str, "image": str, "scene": dict, "rounds": list}, "record")
    scene = rec["scene"]
    _check_fields(scene, {"size": int, "objects": list}, "scene")
    for j, obj in enumerate(scene["objects"]):
        _check_fields(obj, _OBJECT_FIELDS, f"scene object {j}")
    if not rec["rounds"]:
        raise _Bad("field 'rounds' is empty")
    for r, rd in enumerate(rec["rounds"]):
        _check_fields(rd, _ROUND_FIELDS, f"round {r}")
        if rd["round"] != r:
            raise _Bad(f"round {r} field 'round' is {rd['round']}")
        dep = rd["depends_on"]
        if dep is not None and not 0 <= dep < r:
            raise _Bad(f"round {r} field 'depends_on' is {dep}, not an earlier round")
        if rd["distance"] != (0 if dep is None else r - dep):
            raise _Bad(f"round {r} field 'distance' is {rd['distance']}, but depends_on is {dep}")
        if (r == 0) != (rd["family"] == "caption"):
            raise _Bad(f"round {r} field 'family' is {rd['family']!r}: round 0, and only it, is the caption")
        if rd["scored"] == (rd["family"] in ("caption", "statement", "chat")):
            raise _Bad(f"round {r} field 'scored' is {rd['scored']} for a {rd['family']} round")
    if not is_wording(rec["rounds"][0]["question"], {"op": "caption"}, "none"):
        raise _Bad(f"round 0 field 'question' should ask for the caption: {CAPTION_QUESTION!r} or another of "
                   f"its wordings {CAPTION_WORDINGS[1:]}")


def load_split(world_dir, split: str) -> list[dict]:
    """The records of one split, each validated; a bad line raises MMDialogError naming file, line and field."""
    if split not in SPLIT_IDS:
        raise MMDialogError(f"unknown split {split!r}; the shapes world has {list(SPLITS)} "
                            f"and may have the held-out {list(HELDOUT_SPLITS)}")
    path = Path(world_dir) / f"{split}.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MMDialogError(f"split file not found: {path} (write a world with `generate_world`)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MMDialogError(f"cannot read {path}: {e}") from None
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise MMDialogError(f"{path} line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
        try:
            _validate(rec)
        except _Bad as e:
            raise MMDialogError(f"{path} line {n}: {e}") from None
        records.append(rec)
    return records


def record_to_conversation(record: dict, world_dir) -> Conversation:
    """User: [image, "Describe the picture."], assistant: caption, then one question / answer pair per round."""
    image = Image(path=str((Path(world_dir) / record["image"]).resolve()))
    rounds = record["rounds"]
    conv = Conversation(meta={"id": record["id"], "rounds": rounds})
    conv.add("user", image, Text(rounds[0]["question"]))
    conv.add("assistant", rounds[0]["answer"])
    for rd in rounds[1:]:
        conv.add("user", rd["question"])
        conv.add("assistant", rd["answer"])
    return conv
