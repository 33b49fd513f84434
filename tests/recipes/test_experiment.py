"""The experiment's training variants change the training data as named; effects are judged against seed noise."""

import random

import pytest
import torch

from mmdialog.data.dataset import ConversationDataset
from mmdialog.data.worlds.shapes import record_to_conversation
from mmdialog.data.worlds.shapes.scene import Scene
from mmdialog.recipes.experiment import (
    AugmentedDataset, LastTurnDataset, augment_rounds, effect, experiment_markdown, keep_only_turn,
    summarise_experiment,
)
from mmdialog.eval.teacher_forced import assistant_spans
from mmdialog.objectives.lm import IGNORE_INDEX


def test_augmented_rounds_stay_right(world32):
    _, records = world32
    rng = random.Random(0)
    cut = inserted = masked = 0
    for _ in range(30):
        for rec in records:
            rounds = augment_rounds(rec, rng)
            scene = Scene.from_dict(rec["scene"])
            kept = [rd["round"] for rd in rounds if rd["round"] >= 0]
            assert kept[0] == 0 and kept == sorted(kept)  # the image round stays first; order kept
            cut += len(kept) < len(rec["rounds"])
            for i, rd in enumerate(rounds):
                if rd["round"] < 0:  # a distractor: a count answered from the scene, never before a "the previous" round
                    inserted += 1
                    assert rd["question"].startswith("How many ") and rd["train"]
                    assert i + 1 == len(rounds) or rounds[i + 1]["distance"] != 1
                    words = rd["question"][len("How many "):-len(" are there?")].split()
                    noun = words[-1][:-1]
                    f = {("shape" if noun in ("circle", "square", "triangle") else None): noun}
                    f.update({("size" if w in ("small", "large") else "colour"): w for w in words[:-1]})
                    f.pop(None, None)
                    assert rd["answer"] == str(len(scene.matching(f)))
                else:
                    dep = rd["depends_on"]
                    answerable = dep is None or (dep in kept and next(x["train"] for x in rounds if x["round"] == dep))
                    assert rd["train"] == answerable  # needs a cut round (or one that does): not trained
                    masked += not answerable
    assert cut and inserted and masked


def test_last_turn_keeps_one_reply_supervised(tiny, world32):
    model, proc = tiny
    world, records = world32
    base = ConversationDataset.build([record_to_conversation(r, world) for r in records[:2]], proc, progress=False)
    tok = proc.tokenizer
    ex = base[0]
    spans = assistant_spans(ex.input_ids.tolist(), tok.role_ids["assistant"], tok.end_id)
    cut = keep_only_turn(ex, 3, tok.role_ids["assistant"], tok.end_id)
    start, end = spans[3]
    assert len(cut.input_ids) == end + 1 and cut.input_ids[-1] == tok.end_id
    assert torch.equal(cut.labels[start:], ex.input_ids[start:end + 1]) and torch.all(cut.labels[:start] == IGNORE_INDEX)
    ds = LastTurnDataset(base, proc, seed=0)
    lengths = {len(ds[0].input_ids) for _ in range(20)}
    assert len(lengths) > 1  # a new cut on every draw
    assert all(int((ds[1].labels != IGNORE_INDEX).sum()) >= 1 for _ in range(5))


def test_augmented_dataset_masks_unanswerable_replies(tiny, world32):
    model, proc = tiny
    world, records = world32
    ds = AugmentedDataset(records[:3], world, proc, seed=0)
    tok = proc.tokenizer
    saw_mask = False
    for _ in range(20):
        for i in range(len(ds)):
            ex = ds[i]
            spans = assistant_spans(ex.input_ids.tolist(), tok.role_ids["assistant"], tok.end_id)
            trained = [bool((ex.labels[s:e + 1] != IGNORE_INDEX).all()) for s, e in spans]
            assert all(trained[i] or bool((ex.labels[s:e + 1] == IGNORE_INDEX).all()) for i, (s, e) in enumerate(spans))
            saw_mask |= not all(trained)
            assert ex.images is not None and ex.images.shape[0] == 1
    assert saw_mask


def test_effect_is_judged_against_seed_noise():
    a = [{"x": 0.50}, {"x": 0.52}, {"x": 0.48}]
    b = [{"x": 0.60}, {"x": 0.61}, {"x": 0.59}]
    e = effect(a, b, ("x",))
    assert e["diff"] == pytest.approx(0.10) and e["verdict"] == "effect" and e["z"] > 2
    noisy = effect(a, [{"x": 0.40}, {"x": 0.62}, {"x": 0.55}], ("x",))
    assert noisy["verdict"] == "noise"
    assert effect(a[:1], b[:1], ("x",))["verdict"].startswith("n/a")


def test_experiment_tables():
    def run(seed, base):
        acc = {"overall": base, "by_distance": {"0": base}, "needs_history": base - 0.1, "dialogues_fully_right": 0.1}
        pol = {"own_history": {"accuracy": acc}, "gold_history": {"accuracy": acc}, "gap": 0.05}
        return {"accuracy": acc, "modes": {"own_history": {"accuracy": acc}}, "gap": {"overall": 0.05},
                "history_gain": {"overall": 0.2}, "policies": {"full": pol, "last_k:4": pol}, "seed": seed,
                "train": {"steps": 10}}

    results = {"every_turn": [run(0, 0.5), run(1, 0.52)], "last_turn": [run(0, 0.4), run(1, 0.41)]}
    s = summarise_experiment(results, ("every_turn", "last_turn"), ("full", "last_k:4"))
    assert s["variants"]["last_turn"]["effects"]["gold d>=1"]["diff"] == pytest.approx(-0.105)
    md = experiment_markdown(s)
    assert "| last_turn |" in md and "last_k:4" in md and "effect" in md
