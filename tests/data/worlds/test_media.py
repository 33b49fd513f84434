"""Media dialogues: clips, beeps and later pictures. Determinism, the default world untouched, every answer
re-derived from the words and the decoded files (never the programs), the checker, and the files read
back by the ShareGPT reader, the processor and `data check`."""

import copy
import hashlib
import json
import re
import wave
from pathlib import Path

import numpy as np
import pytest
from PIL import Image as PILImage

from mmdialog.data.formats import Checks, DataFile
from mmdialog.data.worlds.shapes import generate_world
from mmdialog.data.worlds.shapes.media_check import check_media_record
from mmdialog.data.worlds.shapes.media_io import (
    load_media_split, make_media_dialogue, media_conversation, parse_modalities, summarize_media,
)
from mmdialog.data.worlds.shapes.render import render
from mmdialog.data.worlds.shapes.scene import COLOURS, GRID, Scene
from mmdialog.errors import MMDialogError
from tests.data.worlds.test_heldout import tree_hash
from tests.data.worlds.test_shapes import DESC_RE, PLURAL_RE, desc_from, plural_from, read_dialogue

SEED = 5
N_READ = 120  # dialogues read from their files by the independent reader
# sha256 of the records (json, sorted keys) and of the files (path, bytes) of make_media_dialogue(seed, "train",
# 0..11) for seeds 0 and 1 with all modalities and seed 2 with pictures alone, as drawn on 2026-12-07 with total counts (unchanged
# by the split of media.py into media_state/_clips/_beeps/_pictures/_dialogue): a change of the data shows here.
MEDIA_RECORDS_SHA = "f017d83e8c135f823603ffce8efdd74c8501365dbc9a3d8379c480a32b098c27"
MEDIA_FILES_SHA = "c11deecfc18673a26d595a4ce736f5254777669c331a18576576fbf161395482"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("media-world")
    summary = generate_world(out, dialogues=20, seed=SEED, progress=False, modalities="all", media_dialogues=N_READ)
    return out, summary


# ----------------------------------------------------------------------------- decoding the files

def decode_beeps(path: Path) -> list[str]:
    """Pitches of the beeps of a WAV file: runs of loud samples, each classed by its zero crossings."""
    with wave.open(str(path)) as w:
        rate = w.getframerate()
        x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float64)
    loud = np.flatnonzero(np.abs(x) > 1000)
    runs = np.split(loud, np.flatnonzero(np.diff(loud) > 0.01 * rate) + 1) if len(loud) else []
    pitches = []
    for run in runs:
        s = x[run[0]:run[-1] + 1]
        hz = np.count_nonzero(np.signbit(s[:-1]) != np.signbit(s[1:])) / 2 / (len(s) / rate)
        pitches.append("high" if hz > 1000 else "low")
    return pitches


def decode_motion(path: Path, colours: list[str]) -> dict[str, tuple[str, int]]:
    """colour -> (direction, cells moved), from the first and last frames of an APNG: each colour's centroid."""
    with PILImage.open(path) as im:
        im.seek(0)
        first = np.asarray(im.convert("RGB"))
        im.seek(im.n_frames - 1)
        last = np.asarray(im.convert("RGB"))
    cell = first.shape[0] / GRID
    out = {}
    for colour in colours:
        c0, c1 = (np.argwhere((f == COLOURS[colour]).all(-1)).mean(0) for f in (first, last))  # (row, col)
        dy, dx = c1 - c0
        cells = int(round(max(abs(dx), abs(dy)) / cell))
        direction = "nowhere" if cells == 0 else (("right" if dx > 0 else "left") if abs(dx) > abs(dy)
                                                  else ("down" if dy > 0 else "up"))
        out[colour] = (direction, cells)
    return out


# ----------------------------------------------------------------------------- an independent reader

ORD = {"first": 0, "second": 1, "third": 2, "fourth": 3, "fifth": 4, "last": -1}
PIC_RE = "the picture|the first picture|the second picture"
SUBJECT_RE = rf"it|the {DESC_RE}(?: we talked about earlier)?"
TAG_RE = re.compile(r"<(image|audio|video)>")


def shown_media(record, media_root):
    """Per round, the media its user turn holds, read from the ShareGPT fields: [(kind, path)]."""
    queues = {k: list(record[k + "s"]) for k in ("image", "audio", "video")}
    per_round = []
    for msg in record["messages"][::2]:
        per_round.append([(k, media_root / queues[k].pop(0)) for k in TAG_RE.findall(msg["content"])])
    assert not any(queues.values())
    return per_round


def read_media_dialogue(record, media_root: Path) -> None:
    """Assert that every answer, family, ref and needs of a media dialogue follows from the words and files."""
    rounds = record["rounds"]
    meta = {m["path"]: m for m in record["media"]}
    shown = shown_media(record, media_root)
    for r, rd in enumerate(rounds):
        assert record["messages"][2 * r]["content"] == "".join(f"<{k}>" for k, _ in shown[r]) + rd["question"]
        assert record["messages"][2 * r + 1]["content"] == rd["answer"]
    pictures, beeps, clip = [], None, None  # (round, objects) / (round, pitches) / (round, {colour: shape})
    focus, talked, known = {}, {}, {}  # round -> colour in focus; colour -> last round; colour -> attributes said

    def decode(kind, path, r):
        nonlocal beeps, clip
        entry = meta[str(path.relative_to(media_root))]
        if kind == "image":
            scene = Scene.from_dict(entry["scene"])
            assert np.array_equal(np.asarray(PILImage.open(path).convert("RGB")), np.asarray(render(scene)))
            pictures.append((r, entry["scene"]["objects"]))
        elif kind == "audio":
            beeps = (r, decode_beeps(path))
            assert beeps[1] == entry["beeps"]["pitches"]
        else:
            objs = entry["clip"]["objects"]
            motion = decode_motion(path, [o["colour"] for o in objs])
            shapes = [dict(o, direction=motion[o["colour"]][0], cells=motion[o["colour"]][1]) for o in objs]
            assert [(o["direction"], o["cells"]) for o in shapes] == [(o["direction"], o["cells"]) for o in objs]
            clip = (r, shapes)

    def need(r_shown, i):
        return [r_shown] if 0 < r_shown < i else []

    def matching(objs, desc):
        return [o for o in objs if all(o[a] == v for a, v in desc.items())]

    def the(objs, desc, where):
        m = matching(objs, desc)
        assert len(m) == 1, f"{where}: 'the {desc}' matches {len(m)}"
        return m[0]

    def picture(name, where):
        if name == "the picture":
            assert len(pictures) == 1, where
            return pictures[0]
        assert len(pictures) == 2, where
        return pictures[0] if name == "the first picture" else pictures[1]

    start = 1
    if record["kind"] == "mixed":
        start = next(i for i in range(1, len(rounds)) if shown[i])  # the picture world's rounds come first
        decode(*shown[0][0], 0)
        read_dialogue({"id": record["id"], "scene": {"objects": pictures[0][1]}, "rounds": rounds[:start]})
    else:
        decode(*shown[0][0], 0)
        m = re.fullmatch(rf"There are (\d) shapes\. The {DESC_RE} moves (left|right|up|down)\.", rounds[0]["answer"])
        o = the(clip[1], desc_from(m.groups()[1:5]), "caption")
        assert rounds[0]["question"] == "Describe the clip." and int(m[1]) == len(clip[1]) and o["direction"] == m[6]
        focus[0], talked[o["colour"]], known[o["colour"]] = o["colour"], 0, {"colour", "shape", "direction"}

    for i in range(start, len(rounds)):
        rd, q, where = rounds[i], rounds[i]["question"], f"{record['id']} round {i}: {rounds[i]['question']!r}"
        for kind, path in shown[i]:
            decode(kind, path, i)
        needs, ref, target, said = [], "none", None, set()
        if shown[i]:  # a turn that brings media asks about them at once
            if q == "Now listen: how many beeps are there?":
                family, answer = "beeps", str(len(beeps[1]))
            elif q == "Now watch this clip: how many shapes move?":
                family, answer = "motion", str(sum(o["cells"] > 0 for o in clip[1]))
            else:
                m = re.fullmatch(rf"Now look at this picture: how many (?:{PLURAL_RE}|shapes) are there\?", q)
                f = plural_from(m.groups()) if m[3] else {}
                family, answer = "count", str(len(matching(pictures[-1][1], f)))
        elif m := re.fullmatch(r"How many shapes (move|move (left|right|up|down)|stay still)\?", q):
            d = m[2] or ("nowhere" if m[1] == "stay still" else None)
            family, needs = "motion", need(clip[0], i)
            answer = str(sum(o["cells"] > 0 if d is None else o["direction"] == d for o in clip[1]))
        elif m := re.fullmatch(r"How many (high|low) beeps are there\?", q):
            family, needs, answer = "beeps", need(beeps[0], i), str(beeps[1].count(m[1]))
        elif m := re.fullmatch(r"Is the (first|second|third|fourth|fifth|last) beep high or low\?", q):
            k = ORD[m[1]]
            assert (k < len(beeps[1])) and (k != -1 or len(beeps[1]) > 1), where
            family, needs, answer = "beeps", need(beeps[0], i), beeps[1][k]
        elif m := re.fullmatch(r"Is the last beep (higher|lower) than the first\?", q):
            p = beeps[1]
            assert len(p) > 1, where
            want = ("low", "high") if m[1] == "higher" else ("high", "low")
            family, needs, answer = "beeps", need(beeps[0], i), "yes" if (p[0], p[-1]) == want else "no"
        elif m := re.fullmatch(rf"How many {PLURAL_RE} are in ({PIC_RE})\?", q):
            r_pic, objs = picture(m[4], where)
            family, needs, answer = "count", need(r_pic, i), str(len(matching(objs, plural_from(m.groups()[:3]))))
        elif m := re.fullmatch(rf"(?:What (colour|shape|size) is|Where is) the {DESC_RE} in ({PIC_RE})\?", q):
            r_pic, objs = picture(m[6], where)
            attr, desc = m[1] or "position", desc_from(m.groups()[1:5])
            assert attr not in desc, where
            family, needs, answer = "attribute", need(r_pic, i), the(objs, desc, where)[attr]
        elif m := re.fullmatch(rf"Which picture has more (?:{PLURAL_RE}|shapes): the first or the second\?", q):
            f = plural_from(m.groups()) if m[3] else {}
            a, b = (len(matching(p[1], f)) for p in pictures)
            assert a or b, where
            family, needs = "compare", need(pictures[1][0], i)
            answer = "the first" if a > b else "the second" if b > a else "neither"
        elif m := re.fullmatch(rf"Is there a {DESC_RE} in both pictures\?", q):
            f = desc_from(m.groups())
            family, needs = "compare", need(pictures[1][0], i)
            answer = "yes" if all(matching(p[1], f) for p in pictures) else "no"
        elif m := re.fullmatch(rf"Are there that many (?:{PLURAL_RE}|shapes) in ({PIC_RE})\?", q):
            prev = rounds[i - 1]
            assert re.fullmatch(r"\d", prev["answer"]) and re.search(r"[Hh]ow many", prev["question"]), where
            r_pic, objs = picture(m[4], where)
            assert not re.search(rf"are in {m[4]}\?$", prev["question"]), f"{where}: the picture just counted"
            f = plural_from(m.groups()[:3]) if m[3] else {}
            family, ref, needs = "cross", "count", [i - 1, *need(r_pic, i)]
            answer = "yes" if len(matching(objs, f)) == int(prev["answer"]) else "no"
        elif q == "What colour is the shape that moves farthest?":
            cells = sorted((o["cells"] for o in clip[1]), reverse=True)
            assert len(cells) == 1 or cells[0] > cells[1], where
            target = max(clip[1], key=lambda o: o["cells"])
            family, needs, answer, said = "motion", need(clip[0], i), target["colour"], {"colour"}
        elif m := re.fullmatch(rf"Does the {DESC_RE} move farther than the {DESC_RE}\?", q):
            a, b = the(clip[1], desc_from(m.groups()[:4]), where), the(clip[1], desc_from(m.groups()[4:]), where)
            assert a is not b, where
            family, needs, answer = "motion", need(clip[0], i), "yes" if a["cells"] > b["cells"] else "no"
        else:
            if m := re.fullmatch(rf"Which way does ({SUBJECT_RE}) move\?", q):
                asked, subject = "direction", m[1]
            elif m := re.fullmatch(rf"Does ({SUBJECT_RE}) move fast or slowly\?", q):
                asked, subject = "speed", m[1]
            elif m := re.fullmatch(rf"What (colour|shape|size) is ({SUBJECT_RE})\?", q):
                asked, subject = m[1], m[2]
                assert subject == "it" or not (len(pictures)), f"{where}: ambiguous with pictures around"
            elif m := re.fullmatch(rf"What about the {DESC_RE}\?", q):
                asked, subject = rounds[i - 1]["_asked"], "ellipsis"
            else:
                raise AssertionError(f"{where}: no reading")
            if subject == "it":
                colour = focus.get(i - 1)
                assert colour is not None and asked not in known[colour], where
                target, ref, needs = next(o for o in clip[1] if o["colour"] == colour), "pronoun", [i - 1]
            elif subject == "ellipsis":
                desc = desc_from(m.groups())
                target, ref, needs = the(clip[1], desc, where), "ellipsis", [i - 1]
                assert target["colour"] != focus[i - 1] and asked not in desc, where
                said = set(desc)
            elif subject.endswith(" we talked about earlier"):
                desc = desc_from(re.fullmatch(rf"the {DESC_RE} we talked about earlier", subject).groups())
                assert len(matching(clip[1], desc)) >= 2, f"{where}: not ambiguous in the clip"
                (target,) = [o for o in clip[1] if o["colour"] in talked and all(o[a] == v for a, v in desc.items())]
                assert set(desc) <= known[target["colour"]] and i - talked[target["colour"]] >= 2, where
                ref, needs = "far", [talked[target["colour"]]]
            else:
                desc = desc_from(re.fullmatch(rf"the {DESC_RE}", subject).groups())
                target, said = the(clip[1], desc, where), set(desc)
                assert asked not in desc, where
            needs += need(clip[0], i)
            family = "motion" if asked in ("direction", "speed") else "attribute"
            if asked == "speed":
                assert target["cells"] > 0, where
                answer = "fast" if target["cells"] == 2 else "slowly"
            else:
                answer = target[asked]
            said.add(asked)
            rd["_asked"] = asked
        needs = sorted(set(needs))
        if ref == "none" and needs:
            ref = "media"
        assert rd["answer"] == answer, f"{where}: answer {rd['answer']!r}, the media say {answer!r}"
        assert (rd["family"], rd["ref"]) == (family, ref), f"{where}: {rd['family']}/{rd['ref']}, read {family}/{ref}"
        assert rd["needs"] == needs and rd["depends_on"] == (needs[0] if needs else None), where
        assert rd["distance"] == (i - needs[0] if needs else 0) and rd["scored"], where
        if target is not None:
            focus[i] = target["colour"]
            talked[target["colour"]] = i
            known.setdefault(target["colour"], set()).update(said)


# ----------------------------------------------------------------------------- tests

def test_every_answer_follows_from_the_words_and_the_files(world):
    out, summary = world
    records = [r for split in ("train", "val", "test") for r in load_media_split(out, split)]
    assert len(records) == N_READ and summary["media"]["counts"] == {"train": 96, "val": 12, "test": 12}
    for rec in copy.deepcopy(records):
        read_media_dialogue(rec, out / "media")
    kinds = {r["kind"] for r in records}
    kinds_of_media = {m["type"] for r in records for m in r["media"] if m["round"] > 0}
    assert kinds == {"mixed", "motion"} and kinds_of_media == {"image", "audio", "video"}


def test_the_checker_passes_every_dialogue_and_catches_faults():
    records = [make_media_dialogue(SEED, "train", i)[0] for i in range(300)]
    for rec in records:
        check_media_record(rec)

    def broken(edit):
        for rec in records:
            bad = copy.deepcopy(rec)
            if edit(bad) is not False:
                with pytest.raises(MMDialogError):
                    check_media_record(bad)
                return True
        raise AssertionError("no record to break")

    def first_round(rec, pred):
        return next((rd for rd in rec["rounds"] if pred(rd)), None)

    def wrong_answer(rec):
        rd = first_round(rec, lambda rd: rd["family"] == "beeps")
        if rd is None:
            return False
        rd["answer"] = "7"
        rec["messages"][2 * rd["round"] + 1]["content"] = "7"

    def wrong_needs(rec):
        rd = first_round(rec, lambda rd: rd["ref"] == "media")
        if rd is None:
            return False
        rd["needs"], rd["depends_on"], rd["distance"] = [], None, 0

    def wrong_picture_name(rec):
        rd = first_round(rec, lambda rd: rd["program"].get("picture") == "the first picture")
        if rd is None:
            return False
        rd["program"]["picture"] = "the picture"
        rd["question"] = rd["question"].replace("the first picture", "the picture")
        rec["messages"][2 * rd["round"]]["content"] = rd["question"]

    def wrong_number(rec):
        rd = first_round(rec, lambda rd: rd["program"]["op"] == "that_many")
        if rd is None:
            return False
        rd["program"]["number"] += 1
        from mmdialog.data.worlds.shapes.media import answer_of
        from mmdialog.data.worlds.shapes.media_io import media_values
        rd["answer"] = answer_of(rd["program"], media_values(rec))
        rec["messages"][2 * rd["round"] + 1]["content"] = rd["answer"]

    def media_too_early(rec):
        late = [m for m in rec["media"] if m["round"] > 1]
        if not late:
            return False
        late[0]["round"] -= 1  # shown a round before it is asked about: the rounds' media lists disagree

    for edit in (wrong_answer, wrong_needs, wrong_picture_name, wrong_number, media_too_early):
        assert broken(edit), edit.__name__


def test_distance_family_and_media_mix():
    s = summarize_media(make_media_dialogue(SEED, "val", i)[0] for i in range(300))
    assert s["questions"] > 2000 and s["kinds"]["motion"] > 60 and s["kinds"]["mixed"] > 150
    assert all(s["by_distance"][d] > 0.08 for d in ("0", "1", "2", "3+")), s["by_distance"]
    assert all(s["by_family"][f] > 0.03 for f in ("count", "attribute", "motion", "beeps", "compare", "cross"))
    assert s["by_ref"]["far"] > 0.02 and s["by_ref"]["media"] > 0.15


def test_media_dialogues_keep_their_records_and_bytes():
    records, files = hashlib.sha256(), hashlib.sha256()
    for seed, modalities in ((0, "all"), (1, "all"), (2, "image")):
        for i in range(12):
            record, data = make_media_dialogue(seed, "train", i, modalities=modalities)
            records.update(json.dumps(record, sort_keys=True).encode())
            for path in sorted(data):
                files.update(path.encode())
                files.update(data[path])
    assert (records.hexdigest(), files.hexdigest()) == (MEDIA_RECORDS_SHA, MEDIA_FILES_SHA)


def test_same_seed_same_bytes_and_the_picture_world_untouched(world, tmp_path):
    out, _ = world
    again = tmp_path / "again"
    generate_world(again, dialogues=20, seed=SEED, progress=False, modalities="all", media_dialogues=N_READ)
    assert tree_hash(out) == tree_hash(again)
    default = tmp_path / "default"
    generate_world(default, dialogues=20, seed=SEED, progress=False)
    assert tree_hash(out, ("world.json", "media")) == tree_hash(default, ("world.json",))
    w, d = (json.loads((p / "world.json").read_text()) for p in (out, default))
    assert w.pop("media")["modalities"] == ["image", "audio", "video"] and w == d
    other = tmp_path / "other"
    generate_world(other, dialogues=20, seed=SEED + 1, progress=False, modalities="all", media_dialogues=N_READ)
    assert (other / "media/test.jsonl").read_text() != (out / "media/test.jsonl").read_text()


def test_dialogues_do_not_depend_on_order_or_world_size(world, tmp_path):
    out, _ = world
    lines = (out / "media/test.jsonl").read_text().splitlines()
    record, files = make_media_dialogue(SEED, "test", 5, image_size=64)
    assert json.loads(lines[5]) == record and all((out / "media" / p).read_bytes() == b for p, b in files.items())
    small = tmp_path / "small"
    generate_world(small, dialogues=20, seed=SEED, progress=False, modalities="all", media_dialogues=60)
    assert (small / "media/test.jsonl").read_text().splitlines() == lines[:6]
    generate_world(out, dialogues=20, seed=SEED, progress=False, modalities="all", media_dialogues=60)  # in place
    assert tree_hash(out / "media") == tree_hash(small / "media")  # the larger world's extra files are gone
    generate_world(out, dialogues=20, seed=SEED, progress=False, modalities="all", media_dialogues=N_READ)


def test_image_only_media_dialogues_bring_second_pictures(tmp_path):
    generate_world(tmp_path, dialogues=10, seed=1, progress=False, media_dialogues=20)
    records = load_media_split(tmp_path, "train")
    assert {m["type"] for r in records for m in r["media"]} == {"image"}
    assert all(len(r["media"]) == 2 and r["kind"] == "mixed" for r in records)
    assert not (tmp_path / "media/audio").exists() and not (tmp_path / "media/video").exists()


def test_records_read_as_sharegpt_and_through_the_processor(world, tokenizer):
    from mmdialog.data.processor import AudioTransform, MediaInput, Processor, VideoTransform

    out, _ = world
    path = out / "media/val.jsonl"
    proc = Processor(tokenizer, image_size=32, image_tokens=4, max_length=1024,
                     media={"audio": MediaInput(2, AudioTransform(16000, 16000)), "video": MediaInput(3, VideoTransform(8, 32))})
    data = DataFile(path)
    report = data.check(Checks(processor=proc))
    assert data.format == "sharegpt" and (report.records, report.valid) == (12, 12), report.text()
    for rec, raw in zip(data.records(), load_media_split(out, "val")):
        mine = media_conversation(raw, out)
        assert [(t.role, [(p.type, getattr(p, "path", None) or p.text) for p in t.parts]) for t in rec.conversation.turns] == \
            [(t.role, [(p.type, getattr(p, "path", None) or p.text) for p in t.parts]) for t in mine.turns]
        ex = proc(mine)
        n = {k: len(mine.media(k)) for k in ("image", "audio", "video")}
        for key, kind in (("images", "image"), ("audios", "audio"), ("videos", "video")):
            t = getattr(ex, key)
            assert (t is None) == (n[kind] == 0) and (t is None or t.shape[0] == n[kind])
        if ex.videos is not None:
            assert ex.videos.shape[1:] == (8, 3, 32, 32)


def test_bad_files_and_arguments_are_named(world, tmp_path):
    out, _ = world
    lines = (out / "media/val.jsonl").read_text().splitlines()
    rec = json.loads(lines[1])
    rec["rounds"][2]["needs"] = [5]
    bad = tmp_path / "media"
    bad.mkdir()
    (bad / "val.jsonl").write_text(lines[0] + "\n" + json.dumps(rec) + "\n")
    with pytest.raises(MMDialogError, match=r"val.jsonl line 2: round 2 field 'needs' is \[5\], not sorted earlier"):
        load_media_split(tmp_path, "val")
    with pytest.raises(MMDialogError, match="split file not found.*--modalities"):
        load_media_split(tmp_path, "test")
    with pytest.raises(MMDialogError, match=r"unknown modality \['smell'\]"):
        parse_modalities("image,smell")
    assert parse_modalities("video") == ("image", "video") and parse_modalities("all") == ("image", "audio", "video")
    with pytest.raises(MMDialogError, match="at least 3 question rounds"):
        generate_world(tmp_path / "w", dialogues=10, seed=0, rounds=2, modalities="audio", progress=False)


def test_held_out_combos_stay_out_of_media_dialogues(tmp_path):
    from mmdialog.data.worlds.shapes import heldout_info

    generate_world(tmp_path, dialogues=10, seed=4, progress=False, held_out="combos", held_out_dialogues=2,
                   modalities="all", media_dialogues=60)
    pairs = {tuple(p) for p in heldout_info(tmp_path)["pairs"]}
    seen = set()
    for split in ("train", "val", "test"):
        for rec in load_media_split(tmp_path, split):
            for m in rec["media"]:
                objs = m["scene"]["objects"] if m["type"] == "image" else m["clip"]["objects"] if m["type"] == "video" else []
                seen |= {(o["shape"], o["colour"]) for o in objs}
    assert len(seen) >= 14 and not seen & pairs
