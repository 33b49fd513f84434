"""Colour swaps and training paraphrases keep every label true (the world's checker proves each variant), never
touch a dialogue that asks a colour, never create a held-out shape-colour pair, and never use a held-out wording."""

import random

import numpy as np
import pytest
import torch

from mmdialog.data.conversation import Image
from mmdialog.data.processor import image_to_tensor
from mmdialog.data.tokenizer import ChatTokenizer
from mmdialog.data.worlds.shapes import check_record, generate_world, load_split
from mmdialog.data.worlds.shapes.augment import AugmentedWorldDataset
from mmdialog.data.worlds.shapes.dialogue import question_text
from mmdialog.data.worlds.shapes.heldout import paraphrases
from mmdialog.data.worlds.shapes.io import heldout_info
from mmdialog.data.worlds.shapes.render import render
from mmdialog.data.worlds.shapes.scene import Scene
from mmdialog.data.worlds.shapes.wording import canonical, wordings
from mmdialog.data.worlds.shapes.variants import (
    asks_colour, check_variant, colour_swaps, paraphrase_for_training, swap_colours, swap_pixels, train_paraphrases,
)
from mmdialog.errors import MMDialogError


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("world")
    generate_world(w, dialogues=40, seed=3, image_size=32, held_out=("combos", "paraphrase"), progress=False)
    return w


def test_colour_swaps_are_proved_right_and_spare_colour_questions(world):
    pairs = {tuple(p) for p in heldout_info(world)["pairs"]}
    records = load_split(world, "train")
    swapped = asked = 0
    for rec in records:
        options = colour_swaps(rec, pairs)
        if asks_colour(rec):
            asked += 1
            assert options == []
            with pytest.raises(MMDialogError, match="never applied"):
                swap_colours(rec, "red", "blue")
            continue
        for a, b in options:
            v = swap_colours(rec, a, b)
            check_record(v)  # answers, references, counts re-derived from the swapped scene
            check_variant(v)
            assert all((o["shape"], o["colour"]) not in pairs for o in v["scene"]["objects"])
            assert {k: x for k, x in swap_colours(v, a, b).items() if k != "colour_swap"} == rec
            swapped += v["rounds"] != rec["rounds"]
    assert asked > 0 and swapped > len(records)  # both kinds occur; swaps rewrite the words


def test_swapped_pixels_are_the_swapped_scene(world):
    rec = next(r for r in load_split(world, "train") if colour_swaps(r))
    a, b = colour_swaps(rec)[0]
    pixels = np.asarray(render(Scene.from_dict(rec["scene"])))
    expected = np.asarray(render(Scene.from_dict(swap_colours(rec, a, b)["scene"])))
    assert np.array_equal(swap_pixels(pixels, a, b), expected) and not np.array_equal(pixels, expected)


def all_records(world):
    return [r for s in ("train", "val", "test", "test_combos", "test_paraphrase") for r in load_split(world, s)]


def test_training_wordings_are_never_held_out_or_canonical(world):
    for rec in all_records(world):
        for rd in rec["rounds"][1:]:
            p, ref = rd["program"], rd["ref"]
            if p["op"] == "chat":  # not about the picture: test_paraphrase keeps those turns as they are
                continue
            mine = train_paraphrases(p, ref)
            assert len(set(mine)) == len(mine) >= 4  # distinct, several per kind of question
            assert not set(mine) & (set(paraphrases(p, ref)) | {question_text(p, ref)})
            # every wording an ordinary world may ask, in any surface form, is still not a held-out one
            assert not {canonical(w) for w in wordings(p, ref)} & {canonical(w) for w in paraphrases(p, ref)}
    held = {rd["question"] for r in load_split(world, "test_paraphrase") for rd in r["rounds"][1:]
            if rd["family"] != "chat"}
    rng = random.Random(0)
    asked = {rd["question"] for r in load_split(world, "train") for _ in range(4)
             for rd in paraphrase_for_training(r, rng, 1.0)["rounds"][1:]}
    assert len(asked) > 100 and not asked & held


def test_paraphrased_records_are_proved_right(world):
    rng = random.Random(1)
    for rec in load_split(world, "train"):
        v = paraphrase_for_training(rec, rng, 0.5)
        check_variant(v)
    bad = paraphrase_for_training(load_split(world, "train")[0], rng, 1.0)
    bad["rounds"][1]["question"] = paraphrases(bad["rounds"][1]["program"], bad["rounds"][1]["ref"])[0]
    with pytest.raises(MMDialogError, match="is none of"):
        check_variant(bad)  # a held-out wording is refused


def dataset(world, **kw):
    from mmdialog.data.processor import Processor

    records = load_split(world, "train")
    texts = [t for r in records for rd in r["rounds"] for t in (rd["question"], rd["answer"])] * 2
    tok = ChatTokenizer.train(texts, 300)
    return AugmentedWorldDataset(records, world, Processor(tok, image_size=32, image_tokens=4), **kw)


def test_every_draw_is_proved_right_and_reproducible(world):
    base = dataset(world, flip=0.5, cut_history=0.5, distractors=0.5, seed=2)
    ds = dataset(world, flip=0.5, cut_history=0.5, distractors=0.5, colour=0.7, paraphrase=0.5, seed=2)
    kinds = set()
    for epoch in range(2):
        base.set_epoch(epoch)
        ds.set_epoch(epoch)
        for i in range(len(ds)):
            rec, rounds, flipped = ds.draw(i)
            check_variant(rec)  # flipped, swapped and reworded together: still true
            assert ds.draw(i)[0] == rec
            assert base.draw(i)[2] == flipped  # the new kinds draw from streams of their own
            kinds |= {"colour"} if "colour_swap" in rec else set()
            kinds |= {"paraphrase"} if rec.get("templates") else set()
    assert kinds == {"colour", "paraphrase"}
    i = next(i for i in range(len(ds)) if "colour_swap" in ds.draw(i)[0] and not ds.draw(i)[2])
    original = Image(path=str(world / load_split(world, "train")[i]["image"])).load()
    swapped = image_to_tensor(swap_pixels(original, *ds.draw(i)[0]["colour_swap"]), 32)
    assert torch.equal(ds[i].images[0], swapped) and not torch.equal(swapped, image_to_tensor(original, 32))
