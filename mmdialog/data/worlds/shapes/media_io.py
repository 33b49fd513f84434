"""Media dialogues on disk: WORLD/media/{train,val,test}.jsonl and their pictures, sounds and clips.

Written only when asked for (`mmdialog world --modalities image,audio,video`, or `--media-dialogues N`
for second pictures alone): the picture world's files keep their bytes. Each record is at once a world
record (media with what they show, rounds with programs and dependencies) and a ShareGPT-style record
(`messages` with <image>/<audio>/<video> tags, `images`/`audios`/`videos` lists), so
`mmdialog data check WORLD/media/train.jsonl` and `mmdialog train data.train_file=WORLD/media/train.jsonl`
read it as it is. The layout is in docs/world.md ("Media dialogues").
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

from mmdialog.data.conversation import MEDIA_PARTS, Conversation, Text
from mmdialog.data.worlds.shapes.beeps import CLIP_SECONDS, PITCHES, SAMPLE_RATE, Beeps, encode_wav, waveform
from mmdialog.data.worlds.shapes.media import FAMILIES, KINDS, MODALITIES, REFS
from mmdialog.data.worlds.shapes.media_dialogue import generate_media_dialogue
from mmdialog.data.worlds.shapes.motion import CLIP_FRAMES, FRAME_MS, Clip, clip_frames
from mmdialog.data.worlds.shapes.render import encode_apng, encode_png, render
from mmdialog.data.worlds.shapes.scene import Draws, Scene, check_image_size
from mmdialog.errors import MMDialogError
from mmdialog.modalities import by_name

MEDIA_DIR = "media"
SPLIT_IDS = {"train": 6, "val": 7, "test": 8}  # seeds apart from the picture world's splits (heldout.SPLIT_IDS)
P_MOTION = 1 / 3  # share of motion dialogues (a clip first) when the world has video
TAGS = {m: by_name(m).tag for m in MODALITIES}  # the ShareGPT-style tags and path lists (mmdialog.modalities)
LISTS = {m: by_name(m).key for m in MODALITIES}
FOLDERS = {"image": ("images", ".png"), "audio": ("audio", ".wav"), "video": ("video", ".png")}  # video: APNG
VALUE_KEYS = {"image": "scene", "audio": "beeps", "video": "clip"}


def parse_modalities(spec) -> tuple[str, ...]:
    """'image,audio,video' / ['audio'] / 'all' -> the modalities in MODALITIES order, image always among them."""
    items = spec.split(",") if isinstance(spec, str) else [x for s in spec for x in str(s).split(",")]
    items = [x.strip() for x in items if x.strip()]
    if "all" in items:
        items = list(MODALITIES)
    unknown = [x for x in items if x not in MODALITIES]
    if unknown:
        raise MMDialogError(f"unknown modalit{'y' if len(unknown) == 1 else 'ies'} {unknown}; the shapes world has "
                            f"{', '.join(MODALITIES)} (or all)")
    return tuple(m for m in MODALITIES if m in items or m == "image")


def make_media_dialogue(seed: int, split: str, index: int, *, image_size: int = 64, rounds: int = 8,
                        modalities=MODALITIES, exclude_pairs=None) -> tuple[dict, dict[str, bytes]]:
    """One record and its media files {relative path: bytes}, in memory. Depends only on the arguments:
    dialogue i of a split draws from numpy.random.default_rng([seed, SPLIT_IDS[split], i]).
    exclude_pairs: (shape, colour) pairs no picture or clip shows (a world with the held-out combos)."""
    if split not in SPLIT_IDS:
        raise MMDialogError(f"unknown split {split!r}; media dialogues have {list(SPLIT_IDS)}")
    if not isinstance(rounds, int) or rounds < 3:
        raise MMDialogError(f"media dialogues need at least 3 question rounds, got rounds={rounds!r}")
    modalities = parse_modalities(modalities)
    draws = Draws(np.random.default_rng([seed, SPLIT_IDS[split], index]))
    kind = "motion" if "video" in modalities and draws.random() < P_MOTION else "mixed"
    media, rds = generate_media_dialogue(kind, draws, image_size=image_size, rounds=rounds, modalities=modalities,
                                         exclude_pairs=exclude_pairs)
    rid = f"media-{split}-{index:05d}"
    files, items = {}, []
    for k, m in enumerate(media):
        folder, suffix = FOLDERS[m["type"]]
        path = f"{folder}/{split}/{rid}-{k}{suffix}"
        value = m["value"]
        if m["type"] == "image":
            files[path] = encode_png(render(value))
        elif m["type"] == "audio":
            files[path] = encode_wav(waveform(value))
        else:
            files[path] = encode_apng(clip_frames(value), FRAME_MS)
        items.append({"type": m["type"], "path": path, "round": m["round"], VALUE_KEYS[m["type"]]: value.to_dict()})
    record = {"id": rid, "kind": kind, "media": items, "rounds": rds, **sharegpt_fields(items, rds)}
    return record, files


def sharegpt_fields(media: list[dict], rounds: list[dict]) -> dict:
    """messages (a tag per media item before the question of its round) and the media path lists."""
    messages = []
    for rd in rounds:
        tags = "".join(TAGS[media[k]["type"]] for k in rd["media"])
        messages.append({"role": "user", "content": tags + rd["question"]})
        messages.append({"role": "assistant", "content": rd["answer"]})
    lists = {LISTS[t]: [m["path"] for m in media if m["type"] == t] for t in MODALITIES}
    return {"messages": messages, **lists}


def media_values(record: dict) -> list:
    """record["media"] as Scene / Beeps / Clip objects (what answer_of takes)."""
    out = []
    for m in record["media"]:
        if m["type"] == "image":
            out.append(Scene.from_dict(m["scene"]))
        elif m["type"] == "audio":
            out.append(Beeps.from_dict(m["beeps"]))
        else:
            out.append(Clip.from_dict(m["clip"]))
    return out


class _Tally:
    def __init__(self):
        self.dist, self.fam, self.ref, self.kind, self.items = Counter(), Counter(), Counter(), Counter(), Counter()

    def add(self, rec: dict) -> None:
        self.kind[rec["kind"]] += 1
        for m in rec["media"]:
            self.items[m["type"]] += 1
        for rd in rec["rounds"]:
            if rd["scored"]:
                self.dist[str(rd["distance"]) if rd["distance"] < 3 else "3+"] += 1
                self.fam[rd["family"]] += 1
                self.ref[rd["ref"]] += 1

    def summary(self) -> dict:
        total = sum(self.dist.values())

        def shares(c: Counter, keys) -> dict:
            return {k: round(c[k] / max(total, 1), 4) for k in keys}

        return {"questions": total, "kinds": dict(sorted(self.kind.items())), "media": dict(sorted(self.items.items())),
                "by_distance": shares(self.dist, ("0", "1", "2", "3+")),
                "by_family": shares(self.fam, [f for f in FAMILIES if f not in ("caption", "statement", "chat")]),
                "by_ref": shares(self.ref, REFS)}


def summarize_media(records) -> dict:
    tally = _Tally()
    for rec in records:
        tally.add(rec)
    return tally.summary()


def generate_media(world_dir, *, counts: dict[str, int], seed: int, image_size: int = 64, rounds: int = 8,
                   modalities=MODALITIES, exclude_pairs=None, progress: bool = True) -> dict:
    """Write WORLD/media/{split}.jsonl and the media files for `counts` ({split: dialogues}); returns the
    section world.json holds under "media". exclude_pairs: the held-out combos, kept out of every medium."""
    from tqdm import tqdm

    check_image_size(image_size)
    modalities = parse_modalities(modalities)
    out = Path(world_dir) / MEDIA_DIR
    out.mkdir(parents=True, exist_ok=True)
    tally = _Tally()
    with tqdm(total=sum(counts.values()), disable=not progress, desc="media dialogues", unit="dialogue") as bar:
        for split, n in counts.items():
            for folder, _ in FOLDERS.values():
                d = out / folder / split
                if d.is_dir():  # files of an earlier, larger world in the same place
                    ours = re.compile(rf"media-{split}-(\d+)-\d+\.(png|wav)")
                    for p in d.iterdir():
                        m = ours.fullmatch(p.name)
                        if m and int(m[1]) >= n:
                            p.unlink()
            with open(out / f"{split}.jsonl", "w", encoding="utf-8", newline="\n") as f:
                for i in range(n):
                    record, files = make_media_dialogue(seed, split, i, image_size=image_size, rounds=rounds,
                                                        modalities=modalities, exclude_pairs=exclude_pairs)
                    for rel, data in files.items():
                        p = out / rel
                        p.parent.mkdir(parents=True, exist_ok=True)
                        p.write_bytes(data)
                    f.write(json.dumps(record, sort_keys=True) + "\n")
                    tally.add(record)
                    bar.update(1)
    return {"dir": MEDIA_DIR, "counts": dict(counts), "modalities": list(modalities), "kinds": list(KINDS),
            "settings": {"rounds": rounds, "image_size": image_size, "clip_frames": CLIP_FRAMES, "frame_ms": FRAME_MS,
                         "sample_rate": SAMPLE_RATE, "clip_seconds": CLIP_SECONDS, "pitches_hz": dict(PITCHES),
                         "p_motion": round(P_MOTION, 4) if "video" in modalities else 0.0},
            "stats": tally.summary()}


# ----------------------------------------------------------------------------- loading

def validate_media_record(rec) -> None:
    """Raise MMDialogError (without a location) where a media record does not follow the format."""
    def bad(msg):
        raise MMDialogError(msg)

    if not isinstance(rec, dict):
        bad(f"a record must be a JSON object, got {type(rec).__name__}")
    for key, tp in (("id", str), ("kind", str), ("media", list), ("rounds", list), ("messages", list)):
        if not isinstance(rec.get(key), tp):
            bad(f"record field {key!r} is missing or not a {tp.__name__}")
    if rec["kind"] not in KINDS:
        bad(f"record field 'kind' is {rec['kind']!r}, not one of {list(KINDS)}")
    n_rounds = len(rec["rounds"])
    for k, m in enumerate(rec["media"]):
        if not isinstance(m, dict) or m.get("type") not in MODALITIES:
            bad(f"media {k} should be an object with 'type' one of {list(MODALITIES)}")
        for key, tp in (("path", str), ("round", int), (VALUE_KEYS[m["type"]], dict)):
            if not isinstance(m.get(key), tp) or isinstance(m.get(key), bool):
                bad(f"media {k} field {key!r} is missing or not a {tp.__name__}")
        if not 0 <= m["round"] < n_rounds:
            bad(f"media {k} field 'round' is {m['round']}, not a round of the dialogue")
    if not rec["rounds"]:
        bad("field 'rounds' is empty")
    for r, rd in enumerate(rec["rounds"]):
        if not isinstance(rd, dict):
            bad(f"round {r} is not an object")
        for key, tp in (("round", int), ("question", str), ("answer", str), ("family", str), ("ref", str),
                        ("distance", int), ("needs", list), ("scored", bool), ("program", dict), ("media", list)):
            if key not in rd:
                bad(f"round {r} lacks field {key!r}")
            if not isinstance(rd[key], tp) or (tp is int and isinstance(rd[key], bool)):
                bad(f"round {r} field {key!r} should be {tp.__name__}, got {rd[key]!r}")
        if rd["round"] != r:
            bad(f"round {r} field 'round' is {rd['round']}")
        if rd["family"] not in FAMILIES or rd["ref"] not in REFS:
            bad(f"round {r} family/ref {rd['family']!r}/{rd['ref']!r} not among {list(FAMILIES)} / {list(REFS)}")
        needs = rd["needs"]
        if any(not isinstance(x, int) or not 0 <= x < r for x in needs) or needs != sorted(set(needs)):
            bad(f"round {r} field 'needs' is {needs}, not sorted earlier rounds")
        dep = needs[0] if needs else None
        if rd.get("depends_on", "missing") != dep:
            bad(f"round {r} field 'depends_on' is {rd.get('depends_on', 'missing')!r}, but needs is {needs}")
        if rd["distance"] != (0 if dep is None else r - dep):
            bad(f"round {r} field 'distance' is {rd['distance']}, but depends_on is {dep}")
        shown = [k for k, m in enumerate(rec["media"]) if m["round"] == r]
        if rd["media"] != shown:
            bad(f"round {r} field 'media' is {rd['media']}, but the media of round {r} are {shown}")
    if rec["rounds"][0]["media"] == []:
        bad("round 0 shows no media")
    want = sharegpt_fields(rec["media"], rec["rounds"])
    for key, value in want.items():
        if rec.get(key) != value:
            bad(f"record field {key!r} does not match the rounds and media (expected {json.dumps(value)[:120]}...)")


def load_media_split(world_dir, split: str) -> list[dict]:
    """The media records of one split, each validated; a bad line raises MMDialogError naming file and line."""
    if split not in SPLIT_IDS:
        raise MMDialogError(f"unknown split {split!r}; media dialogues have {list(SPLIT_IDS)}")
    path = Path(world_dir) / MEDIA_DIR / f"{split}.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MMDialogError(f"split file not found: {path} (write media dialogues with "
                            "`mmdialog world --modalities image,audio,video`)") from None
    records = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            validate_media_record(rec)
        except json.JSONDecodeError as e:
            raise MMDialogError(f"{path} line {n}: not valid JSON ({e.msg} at column {e.colno})") from None
        except MMDialogError as e:
            raise MMDialogError(f"{path} line {n}: {e}") from None
        records.append(rec)
    return records


def media_conversation(record: dict, world_dir) -> Conversation:
    """The dialogue as a Conversation: each round's media (in order) open its user turn, then the question.
    The same conversation the ShareGPT reader makes of the record (with WORLD/media as the media root)."""
    root = (Path(world_dir) / MEDIA_DIR).resolve()
    conv = Conversation(meta={"id": record["id"], "kind": record["kind"], "rounds": record["rounds"]})
    for rd in record["rounds"]:
        items = [MEDIA_PARTS[m["type"]](path=str(root / m["path"])) for m in (record["media"][k] for k in rd["media"])]
        conv.add("user", *items, Text(rd["question"]))
        conv.add("assistant", rd["answer"])
    return conv
