"""Held-out splits: longer dialogues, unseen shape-colour pairs, unseen wordings; the default world unchanged."""

import copy
import hashlib
import json
from pathlib import Path

import pytest

from mmdialog.data.worlds.shapes import (
    check_record, generate_world, heldout_info, heldout_pairs, load_split, make_dialogue, paraphrases, touches_pairs,
)
from mmdialog.data.worlds.shapes.dialogue import question_text
from mmdialog.data.worlds.shapes.scene import COLOURS, SHAPES
from mmdialog.errors import MMDialogError

# sha256 over (relative path, bytes) of every file of generate_world(dialogues=30, seed=3), as written
# with ordinary phrasing, chat turns (2026-12-06) and four or more training wordings per question (2026-12-07), total counts and caption wordings, version 2 (2026-12-07): the default world must keep these bytes.
DEFAULT_WORLD_SHA = "3b8437f35bb3f08ae727e3fb67e146b04a7ace41faf7810d5fcb8b86320c9796"


def tree_hash(root: Path, skip=()) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and not any(str(rel).startswith(s) for s in skip):
            h.update(str(rel).encode())
            h.update(p.read_bytes())
    return h.hexdigest()


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("heldout")
    summary = generate_world(out, dialogues=30, seed=3, progress=False, held_out="all", held_out_dialogues=12)
    return out, summary


def test_default_world_keeps_its_bytes(tmp_path):
    generate_world(tmp_path, dialogues=30, seed=3, progress=False)
    assert tree_hash(tmp_path) == DEFAULT_WORLD_SHA


def test_long_and_paraphrase_only_add_splits(tmp_path):
    generate_world(tmp_path, dialogues=30, seed=3, progress=False, held_out=("long", "paraphrase"), held_out_dialogues=5)
    skip = ("world.json", "test_long", "test_paraphrase", "images/test_long", "images/test_paraphrase")
    assert tree_hash(tmp_path, skip) == tree_hash_default(tmp_path.parent / "default")
    info = heldout_info(tmp_path)
    assert set(info["splits"]) == {"test_long", "test_paraphrase"} and "pairs" not in info


def tree_hash_default(out: Path) -> str:
    generate_world(out, dialogues=30, seed=3, progress=False)
    return tree_hash(out, ("world.json",))


def test_world_json_lists_the_held_out_splits(world):
    out, summary = world
    info = json.loads((out / "world.json").read_text())["heldout"]
    assert summary["heldout"] == {"test_long": 12, "test_combos": 12, "test_paraphrase": 12}
    assert info["splits"]["test_long"]["rounds"] == 16 and info["splits"]["test_combos"]["rounds"] == 8
    assert all(s["description"] for s in info["splits"].values())
    for split in info["splits"]:
        recs = load_split(out, split)
        assert len(recs) == 12 and all((out / r["image"]).is_file() for r in recs)
        for r in recs:
            check_record(r)


def test_long_dialogues_have_twice_the_rounds(world):
    out, _ = world
    recs = load_split(out, "test_long")
    assert all(len(r["rounds"]) == 17 for r in recs)
    assert max(rd["distance"] for r in recs for rd in r["rounds"]) >= 6
    with pytest.raises(MMDialogError, match="at least twice"):
        generate_world(out / "x", dialogues=10, seed=0, rounds=8, held_out="long", long_rounds=12, progress=False)


def test_held_out_pairs_never_occur_in_training(world):
    out, _ = world
    pairs = heldout_pairs(3)
    assert [tuple(p) for p in heldout_info(out)["pairs"]] == pairs
    assert sorted(s for s, _ in pairs) == sorted(SHAPES) and len({c for _, c in pairs}) == 3
    seen = set()
    for split in ("train", "val", "test"):
        for r in load_split(out, split):
            seen |= {(o["shape"], o["colour"]) for o in r["scene"]["objects"]}
    assert not seen & set(pairs)
    # every shape and every colour still occurs in training, only not in those pairs
    assert {s for s, _ in seen} == set(SHAPES) and {c for _, c in seen} == set(COLOURS)
    combos = load_split(out, "test_combos")
    assert all(any((o["shape"], o["colour"]) in pairs for o in r["scene"]["objects"]) for r in combos)
    touched = [touches_pairs(r, rd["round"], pairs) for r in combos for rd in r["rounds"] if rd["scored"]]
    assert 0 < sum(touched) < len(touched)


def test_paraphrases_are_new_wordings_of_the_same_rounds(world):
    out, _ = world
    default = {rd["question"] for split in ("train", "val", "test") for r in load_split(out, split) for rd in r["rounds"]}
    recs = load_split(out, "test_paraphrase")
    changed = 0
    for r in recs:
        assert r["templates"] == "paraphrase"
        for rd in r["rounds"][1:]:
            assert rd["question"] in paraphrases(rd["program"], rd["ref"])
            if rd["family"] == "chat":  # not about the picture: kept as it is
                continue
            assert rd["question"] != question_text(rd["program"], rd["ref"]) and rd["question"] not in default
            changed += 1
    chats = sum(rd["family"] == "chat" for r in recs for rd in r["rounds"])
    assert changed == 12 * 8 - chats and changed > 80
    # the same draw without paraphrase gives the same scene, programs and answers
    plain, _ = make_dialogue(3, "test_paraphrase", 0)
    assert [rd["answer"] for rd in plain["rounds"]] == [rd["answer"] for rd in recs[0]["rounds"]]
    assert plain["scene"] == recs[0]["scene"]


def test_checker_rejects_a_wording_from_the_wrong_set(world):
    out, _ = world
    rec = load_split(out, "test_paraphrase")[0]
    bad = copy.deepcopy(rec)
    bad["rounds"][2]["question"] = question_text(bad["rounds"][2]["program"], bad["rounds"][2]["ref"])
    with pytest.raises(MMDialogError, match="round 2"):
        check_record(bad)
    plain = copy.deepcopy(rec)
    del plain["templates"]
    with pytest.raises(MMDialogError, match="round 1"):
        check_record(plain)


def test_bad_held_out_kind_is_named(tmp_path):
    with pytest.raises(MMDialogError, match="unknown held-out split kind"):
        generate_world(tmp_path, dialogues=10, seed=0, held_out="longer", progress=False)
    with pytest.raises(MMDialogError, match="unknown split"):
        load_split(tmp_path, "test_wrong")
