"""Label-true augmentation of world dialogues: a flipped record is proved right by the checker, its image is
the mirror image; cut and distractor rounds keep only answerable rounds trained; draws are reproducible."""

import numpy as np
import pytest
import torch

from mmdialog.data.processor import IGNORE_INDEX
from mmdialog.data.tokenizer import ChatTokenizer
from mmdialog.data.worlds.shapes import check_record, generate_world, load_split
from mmdialog.data.worlds.shapes.augment import AugmentedWorldDataset, flip_record, swap_sides
from mmdialog.data.worlds.shapes.render import render
from mmdialog.data.worlds.shapes.scene import Scene


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    w = tmp_path_factory.mktemp("world")
    generate_world(w, dialogues=40, seed=3, image_size=32, progress=False)
    return w


def test_swap_sides():
    assert swap_sides("a red circle at the top left, Right?") == "a red circle at the top right, Left?"
    assert swap_sides("bright leftover") == "bright leftover"  # whole words only


def test_flipped_records_are_proved_right(world):
    records = load_split(world, "train")
    sided = 0
    for rec in records:
        flipped = flip_record(rec)
        check_record(flipped)  # every answer, reference and position re-derived from the mirrored scene
        assert flip_record(flipped) == rec
        text = " ".join(rd["question"] + " " + rd["answer"] for rd in rec["rounds"])
        sided += ("left" in text) or ("right" in text)
    assert sided > len(records) // 2  # the flip changes words in most dialogues


def test_flipped_scene_renders_as_the_mirror_image(world):
    rec = load_split(world, "train")[0]
    mirror = np.asarray(render(Scene.from_dict(flip_record(rec)["scene"])), dtype=np.int32)
    original = np.asarray(render(Scene.from_dict(rec["scene"])), dtype=np.int32)[:, ::-1]
    assert (np.abs(mirror - original).max(-1) > 0).mean() < 0.05  # the same picture up to anti-aliased edges


def dataset(world, **kw):
    from mmdialog.data.processor import Processor

    records = load_split(world, "train")
    texts = [t for r in records for rd in r["rounds"] for t in (rd["question"], rd["answer"])] * 2
    tok = ChatTokenizer.train(texts + ["How many things are there?"], 300)
    return AugmentedWorldDataset(records, world, Processor(tok, image_size=32, image_tokens=4), **kw)


def test_draws_are_reproducible_per_epoch(world):
    ds = dataset(world, flip=0.5, cut_history=0.5, distractors=0.5, seed=1)
    first = [ds[i].input_ids for i in range(8)]
    assert all(torch.equal(a, ds[i].input_ids) for i, a in enumerate(first))  # no hidden state
    ds.set_epoch(1)
    assert any(not torch.equal(a, ds[i].input_ids) for i, a in enumerate(first))


def test_flip_mirrors_the_image_tensor(world):
    plain, flipped = dataset(world), dataset(world, flip=1.0)
    a, b = plain[0], flipped[0]
    assert torch.equal(a.images, b.images.flip(-1))


def test_cut_rounds_leave_dependent_answers_untrained(world):
    ds = dataset(world, cut_history=1.0, distractors=1.0, seed=0)
    untrained = 0
    for i in range(len(ds)):
        rec, rounds, _ = ds.draw(i)
        ex = ds[i]
        starts = (ex.input_ids == ds.assistant_id).nonzero().squeeze(1).tolist()
        assert len(starts) == len(rounds)
        for s, rd in zip(starts, rounds):
            assert (ex.labels[s + 1] != IGNORE_INDEX) == rd["train"]
            untrained += not rd["train"]
        assert any(rd["round"] == -1 for rd in rounds)  # a distractor went in
    assert untrained > 0
