"""The lab's metrics on hand-made predictions, and a whole run on a tiny model."""

import json

import pytest

from mmdialog.eval.lab import aggregate, difference, run_lab
from mmdialog.eval.multiturn import first_failed_round, fine_bucket, summarise
from mmdialog.eval.plots import plot_lab
from mmdialog.eval.run import heldout_metrics, write_outputs
from mmdialog.eval.summary import lab_markdown


def row(i, rnd, correct, distance=0, n_rounds=9, family="count"):
    return {"id": f"d{i}", "round": rnd, "distance": distance, "correct": correct, "family": family, "ref": "none",
            "n_rounds": n_rounds}


def test_fine_buckets_and_first_failed_round():
    assert [fine_bucket(d) for d in (0, 1, 2, 3, 5, 6, 11)] == ["0", "1", "2", "3-5", "3-5", "6+", "6+"]
    assert first_failed_round([row(0, 1, True), row(0, 3, False), row(0, 5, False)], 9) == 3 / 9
    assert first_failed_round([row(0, 1, True)], 9) == 1.0
    preds = [row(0, 1, True, 0), row(0, 2, False, 4), row(1, 1, True, 7), row(1, 4, True, 1), row(2, 2, False, 6)]
    m = summarise(preds)
    acc, n = m["accuracy"], m["counts"]
    assert acc["by_distance_fine"] == {"0": 1.0, "1": 1.0, "2": None, "3-5": 0.0, "6+": 0.5}
    assert n["by_distance_fine"] == {"0": 1, "1": 1, "2": 0, "3-5": 1, "6+": 2}
    assert acc["by_distance"]["3+"] == pytest.approx(1 / 3)  # the demo's key, unchanged
    assert acc["first_failed_round"] == pytest.approx((2 / 9 + 1.0 + 2 / 9) / 3)
    assert acc["dialogues_fully_right"] == pytest.approx(1 / 3) and n["dialogues"] == 3


def test_difference_and_aggregate():
    a = summarise([row(0, 1, True), row(0, 2, True, 1)])
    b = summarise([row(0, 1, True), row(0, 2, False, 1)])
    d = difference(a, b)
    assert d["overall"] == 0.5 and d["by_distance_fine"]["1"] == 1.0 and d["by_distance_fine"]["0"] == 0.0
    assert d["by_distance_fine"]["2"] is None
    agg = aggregate([{"x": 1.0, "y": {"z": 2, "w": None}, "l": [1]}, {"x": 3.0, "y": {"z": 4, "w": None}, "l": [2]}])
    assert agg["mean"]["x"] == 2.0 and agg["mean"]["y"]["z"] == 3.0 and agg["mean"]["y"]["w"] is None
    assert agg["std"]["x"] == pytest.approx(2 ** 0.5) and agg["mean"]["l"] is None
    assert aggregate([{"x": 1.0}])["std"]["x"] == 0.0


def test_run_lab_on_a_tiny_model(tiny, world32, tmp_path):
    model, proc = tiny
    world, records = world32
    res = run_lab(model, proc, records[:2], world, max_new_tokens=3, own_history=1, ranking=1, progress=False)
    m = res.metrics
    n = sum(rd["scored"] for r in records[:2] for rd in r["rounds"])
    assert m["counts"]["overall"] == n == len(res.predictions["gold_history"])
    assert set(m["ablations"]) == {"no_history", "last_1", "last_2", "last_4", "shuffled_history", "no_media"}
    # every ablation scores the same questions (round 0, the caption, is never scored)
    for name in m["ablations"]:
        assert m["ablations"][name]["counts"]["overall"] == n
    assert m["gap"]["dialogues"] == 1 and m["modes"]["own_history"]["counts"]["dialogues"] == 1
    assert m["ranking"]["questions"] == sum(rd["scored"] for rd in records[0]["rounds"])
    assert set(m["history_gain"]["by_distance_fine"]) == {"0", "1", "2", "3-5", "6+"}
    assert set(m["eval"]["seconds"]) >= {"gold_history", "own_history", "no_history", "ranking"}
    held = heldout_metrics(model, proc, world, max_new_tokens=3)
    assert set(held) == {"test_long", "test_combos", "test_paraphrase"}
    assert held["test_long"]["rounds"] == 16 and held["test_combos"]["pair_questions"]["n"] > 0
    m["heldout"] = held
    write_outputs(res, m, tmp_path, title="tiny")
    files = {p.name for p in tmp_path.iterdir()}
    assert {"metrics.json", "summary.md", "accuracy.png", "ablations.png", "heldout.png", "predictions.jsonl",
            "predictions_own.jsonl", "predictions_ablations.jsonl", "ranking.jsonl"} <= files
    md = (tmp_path / "summary.md").read_text()
    for needle in ("distance 3-5", "own history", "history gain", "MRR", "test_combos", "![accuracy.png]"):
        assert needle in md
    assert json.loads((tmp_path / "metrics.json").read_text())["accuracy"]["by_distance"].keys() == {"0", "1", "2", "3+"}


def test_summary_of_several_runs_shows_mean_and_std(tmp_path):
    one = summarise([row(0, 1, True), row(0, 2, False, 1)])
    two = summarise([row(0, 1, True), row(0, 2, True, 1)])
    agg = aggregate([one, two])
    md = lab_markdown({**agg["mean"]}, title="two runs", std=agg["std"], runs=["a", "b"])
    assert "0.750 ± 0.354" in md and "2 runs: a, b" in md
    assert [p.name for p in plot_lab({**agg["mean"]}, tmp_path, agg["std"])] == ["accuracy.png"]


def test_ablations_on_the_first_dialogues_compare_with_their_gold(tiny, world32):
    model, proc = tiny
    world, records = world32
    res = run_lab(model, proc, records[:3], world, max_new_tokens=3, ablations=("no_history",), own_history=0,
                  ranking=0, ablation_dialogues=1, progress=False)
    m = res.metrics
    first = sum(rd["scored"] for rd in records[0]["rounds"])
    assert m["ablations"]["no_history"]["counts"]["overall"] == first
    assert m["modes"]["gold_history_ablation_dialogues"]["counts"]["overall"] == first < m["counts"]["overall"]
    world_gain = difference(m["modes"]["gold_history_ablation_dialogues"], m["ablations"]["no_history"])
    assert {k: m["history_gain"][k] for k in world_gain} == world_gain  # the world's keys, beside the per-label "by"
    assert m["history_gain"]["by"]["distance"]["0"] == world_gain["by_distance_fine"]["0"]
    assert m["eval"]["ablation_dialogues"] == 1 and "gap" not in m and "ranking" not in m
    assert "On the first 1 dialogues" in lab_markdown(m, title="t")


def test_own_history_judges_followups_on_the_object_the_models_caption_named(tiny, world32, monkeypatch):
    from mmdialog.data.worlds.shapes.as_said import golds_as_said
    from mmdialog.data.worlds.shapes.dialogue import phrase
    from mmdialog.data.worlds.shapes.scene import ATTRIBUTES, Scene
    from mmdialog.eval import batched_chat

    model, proc = tiny
    world, _ = world32
    from mmdialog.data.worlds.shapes import load_split
    records, got = [], {}
    for rec in load_split(world, "train") + load_split(world, "val") + load_split(world, "test"):
        first, scene = rec["rounds"][0]["program"], Scene.from_dict(rec["scene"])
        scripted = [rd["answer"] for rd in rec["rounds"]]
        for o in range(len(scene.objects)):  # a caption about another object, followed by the scripted answers
            desc = {a: scene.objects[o].get(a) for a in ATTRIBUTES}
            replies = [f"There are {len(scene.objects)} shapes. One is a {phrase(desc)}."] + scripted[1:]
            if first.get("target") not in (None, o) and golds_as_said(rec, replies) != scripted:
                records.append(rec)
                got[rec["id"]] = replies
                break
    assert records, "the small world has a dialogue that refers back to its caption"
    monkeypatch.setattr(batched_chat, "own_history_replies", lambda *a, **k: dict(got))
    res = run_lab(model, proc, records, world, max_new_tokens=3, ablations=(), ranking=0, progress=False)
    own = res.predictions["own_history"]
    moved = [r for r in own if "gold_scripted" in r]
    assert moved and all(r["gold"] != r["gold_scripted"] and r["pred"] == r["gold_scripted"] for r in moved)
    assert all(not r["correct"] and r["correct_scripted"] for r in moved)  # the scripted answer is now wrong
    sc = res.metrics["own_history_scripted"]
    assert sc["rejudged"] == len(moved) and sc["rejudged_correct"] == 0
    own_acc = res.metrics["modes"]["own_history"]["accuracy"]["overall"]
    assert sc["overall"] == pytest.approx(own_acc + len(moved) / len(own))
    assert "judged on the conversation as it happened" in lab_markdown(res.metrics, title="t")
