"""`mmdialog eval --data`: dataset files read as training reads them, every assistant turn scored, by round and
by label, bad records listed with their reasons; scores checked against hand-computed ones."""

import json

import pytest

from mmdialog.config import load_config
from mmdialog.data.conversation import Image
from mmdialog.eval.contexts import ABLATIONS, Context
from mmdialog.eval.datafile import GOLD_NOT_LISTED, LABEL_COUNT, NOT_A_NUMBER, read_eval_file
from mmdialog.eval.matching import canonical, matches, token_f1
from mmdialog.eval.multiturn import difference_groups, summarise_groups
from tests.conftest import TINY
from tests.eval.datafiles import DIALOGUES, bad_lines, write_file, write_images


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("files")
    write_images(root)
    return root


def test_matching_and_token_f1_by_hand():
    assert canonical("  Two. ") == "2" and canonical("Twenty one!") == "21" and canonical("twenty-three") == "23"
    assert canonical("The  Red  one?") == "the red 1"  # both sides alike: "one" is a number word wherever it is
    assert matches("Two.", "2") and not matches("Two.", "2", "exact") and matches(" two ", "two", "exact")
    assert matches("there are 2 of them", "two", "contains") and not matches("there are 12", "two", "contains")
    assert not matches("three", "two")
    assert token_f1("a green square", "green square") == pytest.approx(2 * (2 / 3) * 1 / (2 / 3 + 1))
    assert token_f1("red", "blue") == 0.0 and token_f1("Two.", "2") == 1.0


@pytest.mark.parametrize("labels_on_turns", [False, True])
def test_the_three_formats_read_the_same_records(files, tiny, labels_on_turns):
    model, proc = tiny
    got = {}
    for fmt in ("llava", "sharegpt", "openai"):
        path = write_file(files / f"{fmt}-{labels_on_turns}.jsonl", fmt, labels_on_turns=labels_on_turns)
        data = read_eval_file(path, "auto", processor=proc, modalities=model.encoders.keys(), group_by=("distance",))
        assert data.format == fmt and data.read == 3 and not data.invalid
        got[fmt] = [[(rd["question"], rd["answer"], rd["labels"], sum(isinstance(p, Image) for p in rd["parts"]),
                      rd.get("candidates"), rd.get("gold_candidate")) for rd in rec["rounds"]] for rec in data.records]
        systems = [bool(rec["system"]) for rec in data.records]
        assert systems == [False, True, False]
        assert data.numeric == {"distance"}
    assert got["llava"] == got["sharegpt"] == got["openai"]
    rounds = got["llava"]
    assert [len(r) for r in rounds] == [3, 2, 4]
    assert [x[3] for x in rounds[0]] == [1, 0, 1]  # the second image arrives in the third turn
    assert rounds[0][2][4:] == (["one", "three", "blue"], 1) and rounds[0][1][4] is None
    assert rounds[2][1][2] == {"distance": 1}


def test_bad_records_are_counted_and_listed_with_their_reasons(files, tiny):
    model, proc = tiny
    for fmt in ("llava", "sharegpt", "openai"):
        path = write_file(files / f"bad-{fmt}.jsonl", fmt, extra_lines=bad_lines(fmt) + ["{not json"])
        data = read_eval_file(path, fmt, processor=proc, modalities=model.encoders.keys(), group_by=("distance",))
        assert data.read == 8 and len(data.records) == 3
        reasons = {i["line"]: i["reason"] for i in data.invalid}
        assert sorted(reasons) == [4, 5, 6, 7, 8]
        assert reasons[4].startswith(LABEL_COUNT) and "3 entries" in reasons[4] and "2 assistant turn" in reasons[4]
        assert reasons[5].startswith(NOT_A_NUMBER) and "'far'" in reasons[5] and "turn 1" in reasons[5]
        assert reasons[6].startswith("missing media") and "nowhere.png" in reasons[6]
        assert reasons[7].startswith(GOLD_NOT_LISTED) and "'yes'" in reasons[7]
        assert reasons[8].startswith("not valid JSON")
    # without --group-by distance nothing is numeric: the word is just another label value
    data = read_eval_file(path, "openai", processor=proc, modalities=model.encoders.keys())
    assert 5 not in {i["line"] for i in data.invalid} and len(data.records) == 4


def test_contexts_of_a_file_record_keep_media_where_the_ablations_say(files, tiny):
    model, proc = tiny
    data = read_eval_file(write_file(files / "ctx.jsonl", "sharegpt"), processor=proc,
                          modalities=model.encoders.keys())
    rec = data.records[0]  # images in turns 0 and 2

    def shape(seq):
        return [(t.role, t.text, sum(isinstance(p, Image) for p in t.parts)) for t in seq.conv.turns]

    (gold,) = Context().sequences(rec, None)
    assert shape(gold) == [("user", "How many shapes are there?", 1), ("assistant", "two", 0),
                           ("user", "What colour is the big one?", 0), ("assistant", "red", 0),
                           ("user", "And in this picture, how many?", 1), ("assistant", "three", 0)]
    assert gold.scored == [(0, 0), (1, 1), (2, 2)]
    none = ABLATIONS["no_history"]().sequences(rec, None)
    assert [s.scored for s in none] == [[(0, 0)], [(0, 1)], [(0, 2)]]
    assert shape(none[1]) == [("user", "What colour is the big one?", 1), ("assistant", "red", 0)]  # image kept
    assert shape(none[2]) == [("user", "And in this picture, how many?", 2), ("assistant", "three", 0)]
    (bare,) = ABLATIONS["no_media"]().sequences(rec, None)
    assert [x[:2] for x in shape(bare)] == [x[:2] for x in shape(gold)] and not any(x[2] for x in shape(bare))
    sys_rec = data.records[1]
    assert Context().sequences(sys_rec, None)[0].conv.turns[0].role == "system"
    assert ABLATIONS["last_1"]().sequences(sys_rec, None)[1].conv.turns[0].role == "system"


def _row(i, rnd, correct, n_rounds=3, **labels):
    return {"id": f"d{i}", "round": rnd, "correct": correct, "n_rounds": n_rounds, "labels": labels,
            "f1": 1.0 if correct else 0.0}


def test_summaries_by_round_and_label_by_hand():
    rows = [_row(0, 0, True, distance=0, t="count"), _row(0, 1, False, distance=1, t="attr"),
            _row(0, 2, True, distance=4), _row(1, 0, True, distance=0, t="count"), _row(1, 1, True, distance=9),
            _row(2, 0, False, distance=2, t="attr"), _row(2, 1, True)]
    s = summarise_groups(rows, ("distance", "t"), frozenset({"distance"}))
    assert s["overall"] == pytest.approx(5 / 7) and s["count"] == 7 and s["f1"] == pytest.approx(5 / 7)
    assert s["by_round"] == {"0": {"accuracy": 2 / 3, "count": 3}, "1": {"accuracy": 2 / 3, "count": 3},
                             "2": {"accuracy": 1.0, "count": 1}}
    assert s["by"]["distance"] == {"0": {"accuracy": 1.0, "count": 2}, "1": {"accuracy": 0.0, "count": 1},
                                   "2": {"accuracy": 0.0, "count": 1}, "3-5": {"accuracy": 1.0, "count": 1},
                                   "6+": {"accuracy": 1.0, "count": 1}, "none": {"accuracy": 1.0, "count": 1}}
    assert s["by"]["t"] == {"attr": {"accuracy": 0.0, "count": 2}, "count": {"accuracy": 1.0, "count": 2},
                            "none": {"accuracy": 1.0, "count": 3}}
    assert s["dialogues"] == 3 and s["dialogues_fully_right"] == pytest.approx(1 / 3)
    assert s["first_failed_round"] == pytest.approx((1 / 3 + 1.0 + 0.0) / 3)
    worse = summarise_groups([dict(r, correct=False) for r in rows], ("t",))
    gap = difference_groups(summarise_groups(rows, ("t",)), worse)
    assert gap["overall"] == pytest.approx(5 / 7) and gap["by"]["t"]["count"] == 1.0 and gap["by_round"]["2"] == 1.0


# ----------------------------------------------------------------------------- a model that knows its answers

@pytest.fixture(scope="module")
def memorised(files, tmp_path_factory):
    """A tiny model trained until it answers the three dialogues of DIALOGUES word for word, validating on them
    during training (train.eval_file); (checkpoint directory, run directory, TrainResult)."""
    import torch

    from mmdialog.eval.validation import Validator
    from mmdialog.train.trainer import prepare, train

    train_file = write_file(files / "train.jsonl", "sharegpt")
    out = tmp_path_factory.mktemp("memorised")
    cfg = load_config(None, TINY + [f"data.train_file={train_file}", "train.max_steps=40", "train.batch_size=3",
                                    "train.optimizer=adamw", "train.lr=1e-2", "train.warmup_steps=10",
                                    "train.log_every=10", "train.precision=fp32", "tokenizer.vocab_size=300",
                                    "eval.max_new_tokens=8", "model.decoder.init=fan_in", "model.decoder.max_seq_len=256",
                                    "train.num_threads=1", f"train.eval_file={train_file}", "train.eval_every=20"])
    threads = torch.get_num_threads()
    try:
        tokenizer, model, _, dataset = prepare(cfg, None, progress=False)
        result = train(cfg, model, tokenizer, dataset, out, progress=False, log=lambda *a: None,
                       validator=Validator.build)
    finally:
        torch.set_num_threads(threads)
    return out / "checkpoint", out, result


def test_validation_during_training_goes_into_the_log(memorised):
    ckpt, run, result = memorised
    assert [v["step"] for v in result.validation] == [20, 40]
    log = [json.loads(x) for x in (run / "train_log.jsonl").read_text().splitlines()]
    val = [x for x in log if "val_accuracy" in x]
    assert [v["step"] for v in val] == [20, 40] and all("loss" not in v for v in val)
    assert val[-1]["val_turns"] == 9 and val[-1]["val_accuracy"] == 1.0  # it has learnt its nine replies
    assert val[-1]["val_loss"] < val[0]["val_loss"]


def test_file_eval_on_a_model_that_knows_the_answers(memorised, files, tmp_path):
    """Gold == own when the replies are the gold ones; altered gold replies score as matching says they should."""
    from mmdialog.eval.report import build_report
    from mmdialog.eval.run import run_file_eval

    ckpt, _, _ = memorised
    # the last reply of each dialogue altered: "three" -> "3" (right once normalised), "blue" -> "purple" (wrong),
    # "triangle" kept; the histories stay the ones the model learnt
    altered = [(s, t[:-1] + [t[-1][:2] + ({"three": "3", "blue": "purple"}.get(t[-1][2], t[-1][2]), t[-1][3])],
                [None] * (len(t) - 1) + [c[-1] if c else None] if c else None)
               for s, t, c in DIALOGUES]
    path = write_file(files / "altered.jsonl", "openai", altered, extra_lines=bad_lines("openai"))
    out = tmp_path / "eval"
    m = run_file_eval(str(ckpt), path, out, group_by=("distance", "template"), progress=False, log=None)
    assert m["records"] == 7 and m["scored_records"] == 3 and [i["line"] for i in m["invalid"]] == [4, 5, 6, 7]
    gold, own = m["gold_history"], m["own_history"]
    assert gold["count"] == own["count"] == 9
    assert gold["overall"] == pytest.approx(8 / 9)  # only "purple" is wrong
    assert own["overall"] == gold["overall"] and m["gap"]["overall"] == 0.0 and m["gap"]["by"]["distance"]["1"] == 0.0
    assert gold["by_round"] == {"0": {"accuracy": 1.0, "count": 3}, "1": {"accuracy": 2 / 3, "count": 3},
                                "2": {"accuracy": 1.0, "count": 2}, "3": {"accuracy": 1.0, "count": 1}}
    assert gold["by"]["distance"]["1"] == {"accuracy": 2 / 3, "count": 3}  # "purple" is a distance-1 turn
    assert gold["by"]["distance"]["6+"] == {"accuracy": 1.0, "count": 1} and gold["by"]["distance"]["none"]["count"] == 1
    assert gold["by"]["template"]["attribute"] == {"accuracy": 2 / 3, "count": 3}
    assert gold["dialogues_fully_right"] == pytest.approx(2 / 3)
    assert gold["first_failed_round"] == pytest.approx((1 + 1 / 2 + 1) / 3)
    assert gold["f1"] == pytest.approx(8 / 9)
    assert m["ablation_reference"]["overall"] == pytest.approx(7 / 9)  # exact tokens: "3" is not what it says
    assert set(m["ablations"]) == set(ABLATIONS) and "by" in m["history_gain"]
    r = m["ranking"]
    assert r["questions"] == 2 and r["dialogues"] == 2 and r["candidates"] == 3.0
    assert r["mrr"] == 1.0 and r["r@1"] == 1.0 and r["ndcg"] == 1.0  # it ranks the replies it knows first
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    wrong = [p for p in preds if not p["correct"]]
    assert len(wrong) == 1 and wrong[0]["gold"] == "purple" and wrong[0]["pred"] == "blue"
    assert [p["pred"] for p in preds if p["gold"] == "3"] == ["three"]
    assert (out / "summary.md").read_text().count("## By ") == 3 and (out / "accuracy.png").is_file()
    assert len((out / "invalid.jsonl").read_text().splitlines()) == 4
    html = build_report([out], tmp_path / "report.html").read_text()
    assert "Gold history vs own history" in html and "By template" in html


def test_the_eval_command_takes_a_data_file(memorised, files, tmp_path, capsys):
    from mmdialog.cli import main

    ckpt, _, _ = memorised
    path = write_file(files / "cli.jsonl", "llava", extra_lines=bad_lines("llava"))
    out = tmp_path / "cli"
    rc = main(["eval", "--checkpoint", str(ckpt), "--data", str(path), "--group-by", "distance", "template",
               "--match", "exact", "--ablations", "no_history", "--out", str(out)])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["kind"] == "file" and m["format"] == "llava" and m["match"] == "exact" and len(m["invalid"]) == 4
    assert m["gold_history"]["overall"] == 1.0 and m["own_history"]["overall"] == 1.0 and m["gap"]["overall"] == 0.0
    assert set(m["ablations"]) == {"no_history"} and set(m["gold_history"]["by"]) == {"distance", "template"}
    assert "4 invalid" in capsys.readouterr().out
    assert main(["report", str(out), "--out", str(tmp_path / "r.html")]) == 0
    # a file passed as --world says what to do; a checkpoint and a file with no valid record are clear errors
    assert main(["eval", "--checkpoint", str(ckpt), "--world", str(path), "--out", str(tmp_path / "w")]) == 2
    assert "--data" in capsys.readouterr().err
    bad = files / "all-bad.jsonl"
    bad.write_text("\n".join(bad_lines("llava")) + "\n")
    assert main(["eval", "--checkpoint", str(ckpt), "--data", str(bad), "--group-by", "distance",
                 "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "no valid record" in err and "4 invalid" in err and "line 1" in err


@pytest.mark.parametrize("fmt", ["llava", "openai"])
def test_the_world_written_as_a_file_scores_as_the_world_does(tiny, world32, tmp_path, fmt):
    """One evaluation path: a world split as a dataset file (labels in meta.rounds) gives the world's figures."""
    from mmdialog.eval.datafile import world_to_file
    from mmdialog.eval.lab import run_lab

    model, proc = tiny
    world, records = world32
    path = world_to_file(records[:3], world, tmp_path / f"w.{fmt}.jsonl", fmt)
    data = read_eval_file(path, fmt, world, processor=proc, modalities=model.encoders.keys(),
                          group_by=("distance", "family"))
    assert not data.invalid and data.numeric == {"distance"}
    kw = dict(max_new_tokens=3, ablations=("no_history", "no_media"), own_history=None, ranking=0, progress=False)
    wr = run_lab(model, proc, records[:3], world, group_by=("distance", "family"), **kw)
    fr = run_lab(model, proc, data.records, None, group_by=data.group_by, numeric=data.numeric, **kw)
    for mode in ("gold_history", "own_history", "no_history", "no_media"):  # the same replies, turn by turn
        assert [(r["round"], r["pred"], r["correct"]) for r in fr.predictions[mode]] == \
            [(r["round"], r["pred"], r["correct"]) for r in wr.predictions[mode]], mode
    w, f = wr.metrics, fr.metrics
    assert "accuracy" not in f  # the world's own keys stay the world's
    for key in ("gold_history", "own_history", "gap", "history_gain"):
        assert f[key] == {k: w[key][k] for k in f[key]}, key
    assert f["gold_history"]["by"]["distance"] == {
        b: {"accuracy": w["accuracy"]["by_distance_fine"][b], "count": w["counts"]["by_distance_fine"][b]}
        for b in w["accuracy"]["by_distance_fine"]}
    assert f["ablations"]["no_media"]["overall"] == w["ablations"]["no_media"]["accuracy"]["overall"]
