"""The shapes world: determinism, right answers (checked from the words alone), the
distance mix, the rendering, and loud failures on bad files."""

import copy
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from mmdialog.data.conversation import Image
from mmdialog.data.worlds.shapes import (
    check_record, generate_world, load_split, make_dialogue, record_to_conversation, render, summarize,
)
from mmdialog.data.worlds.shapes.dialogue import CHAT
from mmdialog.data.worlds.shapes.scene import COLOURS, Scene
from mmdialog.errors import MMDialogError

SEED = 3
N_CHECKED = 300

# ----------------------------------------------------------------------------- an independent reader
# It answers every question from the scene and the earlier words of the dialogue only:
# it never looks at the generator's programs, so it checks the words as much as the answers.

SIZE_RE, COLOUR_RE = "small|large", "red|green|blue|yellow|purple|cyan"
POS_RE = "top left|top right|bottom left|bottom right"
DESC_RE = rf"(?:({SIZE_RE}) )?(?:({COLOUR_RE}) )?(circle|square|triangle|thing)(?: at the ({POS_RE}))?"
PLURAL_RE = rf"(?:({SIZE_RE}) )?(?:({COLOUR_RE}) )?(circles|squares|triangles|things)"
VALUE_ATTR = {**{v: "size" for v in SIZE_RE.split("|")}, **{v: "colour" for v in COLOUR_RE.split("|")},
              **{v: "shape" for v in ("circle", "square", "triangle")}}


def desc_from(groups) -> dict:
    size, colour, shape, position = groups
    shape = None if shape == "thing" else shape
    return {a: v for a, v in (("size", size), ("colour", colour), ("shape", shape), ("position", position)) if v}


def plural_from(groups) -> dict:
    size, colour, noun = groups
    return desc_from((size, colour, noun[:-1], None))


def matching(objs, desc) -> list[int]:
    return [i for i, o in enumerate(objs) if all(o[a] == v for a, v in desc.items())]


def read_dialogue(record) -> None:
    """Assert that every answer, depends_on, distance, family and ref follows from the words."""
    objs = record["scene"]["objects"]
    focus, talked, known = [], {}, [set() for _ in objs]  # talked: object -> last round it was the focus
    names = {}  # name -> (object, round, description)
    asked_attr, count_filter = {}, {}  # round -> attribute asked / filter counted

    def the(desc):
        m = matching(objs, desc)
        assert len(m) == 1, f"'the {desc}' matches {len(m)} objects"
        return m[0]

    for i, rd in enumerate(record["rounds"]):
        q, where = rd["question"], f"{record['id']} round {i}: {rd['question']!r}"
        target, dep, learned, attr = None, None, set(), None
        if i == 0:
            assert q == "Describe the picture."
            m = re.fullmatch(rf"There are (\d) shapes\.(?: One is a {DESC_RE}\.)?", rd["answer"])
            assert m and int(m[1]) == len(objs), where
            if m[4]:
                desc = desc_from(m.groups()[1:])
                target, learned = the(desc), set(desc)
            family, ref, answer = "caption", "none", rd["answer"]
        elif chat := [kind for kind, (said, _) in CHAT.items() if q in said]:  # not about the picture
            family, ref, answer = "chat", "none", CHAT[chat[0]][1]
        elif m := re.fullmatch(rf"How many {PLURAL_RE} are there\?", q):
            count_filter[i] = plural_from(m.groups())
            family, ref = "count", "none"
        elif m := re.fullmatch(rf"What about (?:({SIZE_RE}|{COLOUR_RE}) ones|(circles|squares|triangles))\?", q):
            value = m[1] or m[2][:-1]
            prev = count_filter[i - 1]
            assert VALUE_ATTR[value] in prev and prev[VALUE_ATTR[value]] != value, where
            count_filter[i] = {**prev, VALUE_ATTR[value]: value}
            family, ref, dep = "count", "ellipsis", i - 1
        elif m := re.fullmatch(rf"How many of them are (?:({SIZE_RE}|{COLOUR_RE})|(circles|squares|triangles))\?", q):
            value = m[1] or m[2][:-1]
            prev = count_filter[i - 1]
            assert VALUE_ATTR[value] not in prev and record["rounds"][i - 1]["answer"] != "0", where
            count_filter[i] = {**prev, VALUE_ATTR[value]: value}
            family, ref, dep = "count", "group", i - 1
        elif m := re.fullmatch(rf"Is there a {DESC_RE}\?", q):
            desc = desc_from(m.groups())
            found = matching(objs, desc)
            answer = "yes" if found else "no"
            if len(found) == 1:  # "yes" about a single object: it is in focus
                target, learned = found[0], set(desc)
            family, ref = "exist", "none"
        elif m := re.fullmatch(rf"Let's call the {DESC_RE} ([A-Z][a-z]+)\.", q):
            desc = desc_from(m.groups()[:4])
            target, learned = the(desc), set(desc)
            assert m[5] not in names, where
            names[m[5]] = (target, i, desc)
            family, ref, answer = "statement", "none", "OK."
        elif m := re.fullmatch(rf"What did we call the {DESC_RE}\?", q):
            desc = desc_from(m.groups())
            target = the(desc)
            (name, (_, dep, _)), = [(n, v) for n, v in names.items() if v[0] == target and v[2] == desc]
            family, ref, answer = "memory", "memory", name
        elif m := re.fullmatch(rf"What about the {DESC_RE}\?", q):
            desc = desc_from(m.groups())
            attr = asked_attr[i - 1]
            target, dep = the(desc), i - 1
            assert attr not in desc and target != focus[i - 1], where
            learned = set(desc)
            family, ref = "attribute", "ellipsis"
        elif m := re.fullmatch(r"(?:What (colour|shape|size) is|Where is) (.+)\?", q):
            attr, subject = m[1] or "position", m[2]
            family = "attribute"
            if subject == "it":
                target, dep, ref = focus[i - 1], i - 1, "pronoun"
                assert target is not None and attr not in known[target], where
            elif subject in names:
                target, dep, desc = names[subject]
                assert attr not in desc, where
                ref = "name"
            elif far := re.fullmatch(rf"the {DESC_RE} we talked about earlier", subject):
                desc = desc_from(far.groups())
                assert len(matching(objs, desc)) >= 2, f"{where}: not ambiguous in the image"
                (target,) = [o for o in talked if all(objs[o][a] == v for a, v in desc.items())]
                assert set(desc) <= known[target] and attr not in desc, where
                dep, ref = talked[target], "far"
                assert i - dep >= 2, where
            else:
                desc = desc_from(re.fullmatch(rf"the {DESC_RE}", subject).groups())
                target, ref, learned = the(desc), "none", set(desc)
                assert attr not in desc, where
        else:
            raise AssertionError(f"{where}: no reading")

        if family == "count":
            answer = str(len(matching(objs, count_filter[i])))
        elif family == "attribute":
            answer = objs[target][attr]
            asked_attr[i] = attr
            learned.add(attr)
        assert rd["answer"] == answer, f"{where}: answer {rd['answer']!r}, the scene says {answer!r}"
        assert (rd["family"], rd["ref"]) == (family, ref), where
        assert rd["depends_on"] == dep and rd["distance"] == (0 if dep is None else i - dep), where
        assert rd["scored"] == (family not in ("caption", "statement", "chat")), where
        focus.append(target)
        if target is not None:
            talked[target] = i
            known[target] |= learned


@pytest.fixture(scope="module")
def records():
    # canonical phrasing: read_dialogue parses the templates' words (test_ordinary_phrasing covers the rest)
    return [make_dialogue(SEED, "train", i, phrasing="canonical")[0] for i in range(N_CHECKED)]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    summary = generate_world(out, dialogues=80, seed=SEED, progress=False)
    return out, summary


def files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- determinism

def test_same_seed_same_bytes_other_seed_other_bytes(world, tmp_path):
    out, summary = world
    again = tmp_path / "again"
    generate_world(again, dialogues=80, seed=SEED, progress=False)
    first, second = files(out), files(again)
    assert len(first) == 80 + 4 and summary["counts"] == {"train": 64, "val": 8, "test": 8}
    assert first == second
    other = tmp_path / "other"
    generate_world(other, dialogues=80, seed=SEED + 1, progress=False)
    third = files(other)
    assert third.keys() == first.keys()
    assert third["test.jsonl"] != first["test.jsonl"]
    assert sum(third[k] != first[k] for k in first if k.endswith(".png")) > 70


def test_two_processes_write_the_same_bytes_as_one(world, tmp_path):
    out, _ = world
    two = tmp_path / "two"
    generate_world(two, dialogues=80, seed=SEED, progress=False, workers=2)
    assert files(two) == files(out)  # the fixture's world: one process (80 dialogues are below PARALLEL_FROM)


def test_dialogues_do_not_depend_on_order_or_world_size(world, tmp_path):
    out, _ = world
    lines = (out / "test.jsonl").read_text().splitlines()
    record, image = make_dialogue(SEED, "test", 5)
    assert json.loads(lines[5]) == record
    assert np.array_equal(np.asarray(image), Image(path=str(out / record["image"])).load())
    small = tmp_path / "small"
    generate_world(small, dialogues=40, seed=SEED, progress=False)  # 4 test dialogues, a prefix of the 8
    assert (small / "test.jsonl").read_text().splitlines() == lines[:4]


# ----------------------------------------------------------------------------- right answers

def test_every_answer_follows_from_scene_and_history(records):
    for record in records:
        read_dialogue(record)
        check_record(record)


def test_reader_and_checker_catch_a_wrong_answer(records):
    """The two checks above can fail: a single wrong answer anywhere is caught by both."""
    caught = Counter()
    for record in records[:40]:
        for r, rd in enumerate(record["rounds"]):
            if not rd["scored"]:
                continue
            bad = copy.deepcopy(record)
            bad["rounds"][r]["answer"] = {"yes": "no", "no": "yes", "red": "blue", "Max": "Luna"}.get(
                rd["answer"], "7" if rd["answer"].isdigit() and rd["answer"] != "7" else "8")
            with pytest.raises(AssertionError):
                read_dialogue(bad)
            with pytest.raises(MMDialogError, match=f"round {r}"):
                check_record(bad)
            caught[rd["family"]] += 1
    assert set(caught) == {"count", "exist", "attribute", "memory"}


def test_checker_catches_a_wrong_reference(records):
    far = next((rec, r) for rec in records for r, rd in enumerate(rec["rounds"]) if rd["ref"] == "far")
    bad = copy.deepcopy(far[0])
    bad["rounds"][far[1]]["depends_on"] -= 1
    bad["rounds"][far[1]]["distance"] += 1
    with pytest.raises(MMDialogError, match="depends_on"):
        check_record(bad)


def test_far_references_are_ambiguous_in_the_image_and_unique_in_the_history(records):
    n_far = 0
    for record in records:
        objs = record["scene"]["objects"]
        talked = set()
        for rd in record["rounds"]:
            p = rd["program"]
            if rd["ref"] == "far":
                n_far += 1
                assert len(matching(objs, p["desc"])) >= 2
                assert [o for o in talked if all(objs[o][a] == v for a, v in p["desc"].items())] == [p["target"]]
            if p.get("target") is not None and p["op"] != "exist" and p["op"] != "count":
                talked.add(p["target"])
            if p["op"] == "exist" and len(matching(objs, p["filter"])) == 1:
                talked.update(matching(objs, p["filter"]))
    assert n_far > 0.1 * N_CHECKED


def test_distance_and_family_mix():
    recs = [make_dialogue(SEED, "val", i)[0] for i in range(1000)]
    s = summarize(recs)
    d = s["by_distance"]
    assert 0.3 <= d["0"] <= 0.5, d
    assert d["1"] >= 0.15 and d["2"] >= 0.08 and d["3+"] >= 0.08, d
    assert all(s["by_family"][f] > 0.03 for f in ("count", "exist", "attribute", "memory")), s["by_family"]
    assert all(s["by_ref"][r] > 0.02 for r in ("none", "pronoun", "ellipsis", "group", "far", "name", "memory"))
    assert s["questions"] > 0.85 * 1000 * 8  # statements take the rest of the 8 rounds


def test_total_counts_are_asked_as_people_ask_them_and_followed_up():
    """"How many objects are there?" is among the first things people ask; the world asks it (things, objects,
    items, shapes) and answers it with the number of objects; "How many of them are red?" may follow."""
    totals, typed, followed = 0, set(), 0
    for i in range(400):
        record, _ = make_dialogue(SEED, "train", i)
        rounds = record["rounds"]
        for r, rd in enumerate(rounds):
            if rd["program"]["op"] == "count" and rd["program"]["filter"] == {}:
                totals += 1
                assert rd["answer"] == str(len(record["scene"]["objects"])) and rd["distance"] == 0
                typed.update(w for w in ("things", "objects", "items", "shapes") if w in rd["question"].lower())
                followed += r + 1 < len(rounds) and rounds[r + 1]["ref"] == "group"
    assert totals > 40 and typed == {"things", "objects", "items", "shapes"} and followed > 0


def test_the_caption_is_asked_for_in_the_ways_people_ask_for_it():
    from mmdialog.data.worlds.shapes.dialogue import CAPTION_QUESTION, CAPTION_WORDINGS
    from mmdialog.data.worlds.shapes.wording import canonical

    firsts = [make_dialogue(SEED, "train", i)[0] for i in range(300)]
    asked = Counter(canonical(r["rounds"][0]["question"]) for r in firsts)
    assert set(asked) == {canonical(w) for w in CAPTION_WORDINGS}
    assert 0.35 < asked[canonical(CAPTION_QUESTION)] / 300 < 0.65  # the canonical one half of the time
    for record in firsts[:50]:
        check_record(record)
    bad = copy.deepcopy(firsts[0])
    bad["rounds"][0]["question"] = "How many things are there?"
    with pytest.raises(MMDialogError, match="should read 'Describe the picture.' or another of its wordings"):
        check_record(bad)


# ----------------------------------------------------------------------------- scenes and pixels

@pytest.mark.parametrize("size", [32, 64, 96])
def test_rendered_objects_have_their_colour_and_stay_in_their_cell(size):
    for i in range(40):
        record, image = make_dialogue(SEED, "train", i, image_size=size)
        scene = Scene.from_dict(record["scene"])
        px = np.asarray(image)
        assert px.shape == (size, size, 3)
        cell = size // 4
        occupied = np.zeros((size, size), bool)
        assert 3 <= len(scene.objects) <= 7
        assert len({(o.row, o.col) for o in scene.objects}) == len(scene.objects)
        for o, d in zip(scene.objects, record["scene"]["objects"]):
            assert tuple(px[o.y, o.x]) == COLOURS[o.colour]
            assert d["position"] == ("top" if o.row < 2 else "bottom") + (" left" if o.col < 2 else " right")
            block = px[o.row * cell:(o.row + 1) * cell, o.col * cell:(o.col + 1) * cell]
            drawn = ~np.all(block == scene.background, axis=-1)
            assert np.all(block[drawn] == COLOURS[o.colour])  # nothing else drawn in the cell
            assert drawn.sum() >= 4
            occupied[o.row * cell:(o.row + 1) * cell, o.col * cell:(o.col + 1) * cell] = True
        assert np.all(px[~occupied] == scene.background)  # no object spills out of its cell
        assert np.array_equal(np.asarray(render(scene)), px)


def test_sizes_differ_visibly():
    areas = {(shape, size): [] for shape in ("circle", "square", "triangle") for size in ("small", "large")}
    for i in range(30):
        record, image = make_dialogue(SEED, "train", i)
        px, bg = np.asarray(image), record["scene"]["background"]
        for o in record["scene"]["objects"]:
            block = px[o["row"] * 16:(o["row"] + 1) * 16, o["col"] * 16:(o["col"] + 1) * 16]
            areas[o["shape"], o["size"]].append(int((~np.all(block == bg, axis=-1)).sum()))
    for shape in ("circle", "square", "triangle"):
        assert max(areas[shape, "small"]) * 2 < min(areas[shape, "large"]), areas


# ----------------------------------------------------------------------------- files

def test_load_split_and_conversation(world):
    out, summary = world
    recs = load_split(out, "test")
    assert [r["id"] for r in recs] == [f"test-{i:05d}" for i in range(8)]
    conv = record_to_conversation(recs[0], out)
    assert len(conv.turns) == 2 * (8 + 1)
    assert [t.role for t in conv.turns] == ["user", "assistant"] * 9
    first = conv.turns[0]
    assert isinstance(first.parts[0], Image) and Path(first.parts[0].path).is_absolute()
    assert first.parts[0].load().shape == (64, 64, 3) and first.text == "Describe the picture."
    assert len(conv.media()) == 1
    assert conv.turns[1].text == recs[0]["rounds"][0]["answer"]
    assert [t.text for t in conv.turns[2::2]] == [rd["question"] for rd in recs[0]["rounds"][1:]]
    assert conv.meta["id"] == "test-00000" and conv.meta["rounds"] == recs[0]["rounds"]
    world_json = json.loads((out / "world.json").read_text())
    assert world_json["counts"] == summary["counts"] and world_json["seed"] == SEED
    assert world_json["vocabulary"]["colours"]["red"] == list(COLOURS["red"])


def _broken(world, tmp_path, line_no: int, edit) -> Path:
    out, _ = world
    lines = (out / "test.jsonl").read_text().splitlines()
    rec = json.loads(lines[line_no - 1])
    lines[line_no - 1] = edit(rec)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "test.jsonl").write_text("\n".join(lines) + "\n")
    return bad


def _drop_answer(rec):
    del rec["rounds"][3]["answer"]
    return json.dumps(rec)


def _pink(rec):
    rec["scene"]["objects"][1]["colour"] = "pink"
    return json.dumps(rec)


def _far_depends(rec):
    rec["rounds"][2]["depends_on"] = 5
    return json.dumps(rec)


@pytest.mark.parametrize("edit, message", [
    (_drop_answer, r"line 7: round 3 lacks field 'answer'"),
    (_pink, r"line 7: scene object 1 field 'colour' is 'pink'"),
    (_far_depends, r"line 7: round 2 field 'depends_on' is 5"),
    (lambda rec: json.dumps(rec)[:-3], r"line 7: not valid JSON"),
    (lambda rec: json.dumps({k: v for k, v in rec.items() if k != "scene"}), r"line 7: record lacks field 'scene'"),
])
def test_bad_lines_name_file_line_and_field(world, tmp_path, edit, message):
    bad = _broken(world, tmp_path, 7, edit)
    with pytest.raises(MMDialogError, match=re.escape(str(bad / "test.jsonl")) + " " + message):
        load_split(bad, "test")


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(MMDialogError, match=re.escape(str(tmp_path / "val.jsonl"))):
        load_split(tmp_path, "val")
    with pytest.raises(MMDialogError, match="unknown split"):
        load_split(tmp_path, "dev")
    with pytest.raises(MMDialogError, match="image_size"):
        generate_world(tmp_path, dialogues=2, seed=0, image_size=50, progress=False)
    with pytest.raises(MMDialogError, match="splits"):
        generate_world(tmp_path, dialogues=2, seed=0, splits=(0.5, 0.1, 0.1), progress=False)


def test_regenerating_a_smaller_world_in_place_leaves_no_stale_images(tmp_path):
    generate_world(tmp_path, dialogues=30, seed=1, progress=False)
    generate_world(tmp_path, dialogues=10, seed=1, progress=False)
    pngs = sorted(p.name for p in (tmp_path / "images").rglob("*.png"))
    assert pngs == sorted(json.loads(line)["image"].split("/")[-1] for s in ("train", "val", "test")
                          for line in (tmp_path / f"{s}.jsonl").read_text().splitlines())
    assert len(pngs) == 10


def test_ordinary_phrasing_types_like_people_and_keeps_the_programs():
    """phrasing=ordinary (the default) asks the same programs, with the same answers, in the wordings and
    surface forms people type; check_record proves every one right, and turns not about the picture get
    their short honest answer."""
    from mmdialog.data.worlds.shapes.wording import canonical, wordings

    seen, chats = [], 0
    for i in range(200):
        plain, ordinary = make_dialogue(SEED, "train", i, phrasing="canonical")[0], make_dialogue(SEED, "train", i)[0]
        check_record(ordinary)
        assert [(rd["program"], rd["answer"]) for rd in plain["rounds"]] == \
            [(rd["program"], rd["answer"]) for rd in ordinary["rounds"]]
        for rd in ordinary["rounds"][1:]:
            seen.append(rd["question"])
            assert canonical(rd["question"]) in {canonical(w) for w in wordings(rd["program"], rd["ref"])}
            if rd["family"] == "chat":
                chats += 1
                assert rd["answer"] == CHAT[rd["program"]["kind"]][1] and not rd["scored"]
    text = " ".join(seen)
    for typed in (" color ", " colour ", " objects", " things", " big ", " large ", "And its "):
        assert typed in text, typed
    assert sum(q == q.lower() for q in seen) > 0.15 * len(seen)  # lower case
    assert sum(not q.endswith(("?", ".", "!")) for q in seen) > 0.15 * len(seen)  # no final punctuation
    assert 0.03 * 200 < chats < 0.5 * 200
    with pytest.raises(MMDialogError, match="phrasing must be"):
        make_dialogue(SEED, "train", 0, phrasing="fancy")
