from mmdialog.answers import normalise
from mmdialog.eval.multiturn import distance_bucket, summarise


def row(i, distance, correct, family="count", rnd=1, ref="none"):
    return {"id": f"d{i}", "round": rnd, "distance": distance, "correct": correct, "family": family, "ref": ref}


def test_normalise():
    assert normalise(" OK. ") == "ok" and normalise("Top Left") == "top left"


def test_buckets():
    assert [distance_bucket(d) for d in (0, 1, 2, 3, 7)] == ["0", "1", "2", "3+", "3+"]


def test_summarise_splits_by_distance_round_family():
    preds = [row(0, 0, True), row(0, 1, False, "attribute", 2, "pronoun"), row(1, 0, True),
             row(1, 4, True, "memory", 5, "memory"), row(2, 2, False, rnd=3, ref="far")]
    m = summarise(preds)
    acc, n = m["accuracy"], m["counts"]
    assert acc["overall"] == 3 / 5 and n["overall"] == 5
    assert acc["by_distance"] == {"0": 1.0, "1": 0.0, "2": 0.0, "3+": 1.0}
    assert n["by_distance"] == {"0": 2, "1": 1, "2": 1, "3+": 1}
    assert acc["by_family"]["memory"] == 1.0 and n["by_family"]["count"] == 3
    assert acc["by_round"]["1"] == 1.0 and acc["by_round"]["2"] == 0.0
    assert acc["needs_history"] == 1 / 3
    assert acc["dialogues_fully_right"] == 1 / 3  # only d1
