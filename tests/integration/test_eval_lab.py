"""The evaluation lab as a user runs it: world with held-out splits, eval (one run and several seeds),
explain, report, and the experiment, on the tiny recipe (seconds of training).

The commands run in this process through `mmdialog.cli.main` (the same argument parsing and code as the
`mmdialog` script; tests/integration/test_cli.py covers the script itself), which saves a torch import per call.
"""

import contextlib
import io
import json
from types import SimpleNamespace

import pytest

from mmdialog.cli import main
from tests.integration.test_cli import TINY


def cli(*args, check=True):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in args])
    r = SimpleNamespace(returncode=rc, stdout=out.getvalue(), stderr=err.getvalue())
    if check and rc != 0:
        raise AssertionError(f"mmdialog {' '.join(map(str, args))} exited {rc}:\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("lab")
    world = root / "world"
    r = cli("world", "--out", world, "--dialogues", "40", "--seed", "1", "--image-size", "32",
            "--held-out", "long,paraphrase", "--held-out", "combos", "--held-out-dialogues", "2")
    assert json.loads(r.stdout)["heldout"] == {"test_long": 2, "test_combos": 2, "test_paraphrase": 2}
    cli("train", "--config", TINY, "--out", root / "run", f"world.dir={world}")
    return root


def test_eval_writes_every_section(trained):
    out = trained / "run" / "eval"  # where `mmdialog report` looks for a run's evaluation
    r = cli("eval", "--checkpoint", trained / "run" / "checkpoint", "--out", out, "--max-dialogues", "2",
            "--own-history", "1", "--ranking", "1")
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["accuracy"]["by_distance"]) == {"0", "1", "2", "3+"}
    assert set(m["accuracy"]["by_distance_fine"]) == {"0", "1", "2", "3-5", "6+"}
    assert m["eval"]["gold_method"] == "teacher_forced" and m["gap"]["dialogues"] == 1
    assert set(m["ablations"]) == {"no_history", "last_1", "last_2", "last_4", "shuffled_history", "no_media"}
    assert set(m["heldout"]) == {"test_long", "test_combos", "test_paraphrase"}
    assert {"mrr", "r@1", "r@5", "r@10", "mean_rank", "ndcg"} <= set(m["ranking"])
    for f in ("summary.md", "accuracy.png", "ablations.png", "heldout.png", "predictions.jsonl", "ranking.jsonl"):
        assert (out / f).is_file(), f
    assert "history gain by distance" in r.stdout and "held-out test_long" in r.stdout


def test_eval_over_seeds_reports_mean_and_std(trained):
    out = trained / "seeds"
    cli("eval", "--checkpoint", trained / "run" / "checkpoint", "--out", out, "--seeds", "3", "4",
        "--max-dialogues", "2", "--own-history", "0", "--ranking", "0", "--ablations", "--no-heldout")
    m = json.loads((out / "metrics.json").read_text())
    assert m["runs"] == ["seed3", "seed4"] and "std" in m and m["std"]["accuracy"]["overall"] is not None
    for s in ("3", "4"):
        assert len((out / "worlds" / f"seed-{s}" / "test.jsonl").read_text().splitlines()) == 2
        assert (out / "runs" / f"seed{s}" / "metrics.json").is_file()
    assert "Mean ± standard deviation over 2 runs" in (out / "summary.md").read_text()


def test_explain_and_report(trained):
    ex = trained / "run" / "explain"
    r = cli("explain", "--checkpoint", trained / "run" / "checkpoint", "--dialogue", "test_long-00001", "--out", ex)
    assert "attention_rounds.png" in r.stdout and (ex / "attention_image.png").is_file()
    data = json.loads((ex / "explain.json").read_text())
    assert len(data["columns"]) == 17 + 3  # image, 17 rounds, answer, other
    bad = cli("explain", "--checkpoint", trained / "run" / "checkpoint", "--dialogue", "test-00099", "--out", ex,
              check=False)
    assert bad.returncode == 2 and "no dialogue 'test-00099'" in bad.stderr and "Traceback" not in bad.stderr
    cli("report", trained / "run", trained / "seeds", "--out", trained / "report.html")
    page = (trained / "report.html").read_text()
    assert "Comparison" in page and "Training curves" in page and "Where the answers look" in page


def test_experiment_compares_variants(tmp_path):
    r = cli("experiment", "multiturn", "train.max_steps=3", "--config", TINY, "--out", tmp_path, "--budget-minutes", "0",
            "--seeds", "0", "--variants", "every_turn", "every_turn+augment", "--eval-dialogues", "1",
            "--own-dialogues", "1", "--policies", "full", "last_k:2")
    s = json.loads((tmp_path / "experiment.json").read_text())
    assert set(s["variants"]) == {"every_turn", "every_turn+augment"}
    assert s["variants"]["every_turn+augment"]["effects"]["gold d>=1"]["verdict"] == "n/a (one seed)"
    assert set(s["variants"]["every_turn"]["policies"]) == {"full", "last_k:2"}
    md = (tmp_path / "experiment.md").read_text()
    assert "| every_turn+augment |" in md and "last_k:2" in md
    assert "3 steps of training per run" in md      # --budget-minutes 0: every run trains train.max_steps
    for v in ("every_turn", "every_turn_augment"):
        assert json.loads((tmp_path / v / "seed0" / "metrics.json").read_text())["train"]["steps"] == 3
    for f in ("experiment.png", "report.html", "every_turn/seed0/metrics.json", "every_turn_augment/seed0/train_log.jsonl"):
        assert (tmp_path / f).is_file(), f
    assert "experiment.md" in r.stdout


def test_world_rejects_an_unknown_held_out_kind(tmp_path):
    r = cli("world", "--out", tmp_path, "--dialogues", "10", "--held-out", "longer", check=False)
    assert r.returncode == 2 and "unknown held-out split kind" in r.stderr and "Traceback" not in r.stderr
