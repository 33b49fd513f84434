"""`mmdialog experiment fusion` through the CLI: every fusion trained a few steps on the tiny world, one table."""

import json

from tests.integration.test_cli import TINY
from tests.integration.test_eval_lab import cli

from mmdialog.recipes.fusion_experiment import COLUMNS, FUSIONS


def test_fusion_experiment_tables_every_fusion(tmp_path):
    r = cli("experiment", "fusion", "train.max_steps=2", "train.num_threads=1", "--config", TINY, "--out", tmp_path,
            "--budget-minutes", "2", "--eval-dialogues", "1")
    assert "fusion.md" in r.stdout
    s = json.loads((tmp_path / "fusion.json").read_text())
    assert list(s["fusions"]) == list(FUSIONS) and s["settings"]["seeds"] == [0]
    for f, row in s["fusions"].items():
        assert set(COLUMNS) <= set(row), f
        assert row["parameters"]["mean"] > 0 and row["tokens/s"]["mean"] > 0 and row["steps"]["mean"] == 2, f
        assert 0 <= row["accuracy"]["mean"] <= 1 and set(f"d{d}" for d in ("0", "1", "2", "3+")) <= set(row), f
        assert (tmp_path / f / "seed0" / "metrics.json").is_file() and (tmp_path / f / "seed0" / "train_log.jsonl").is_file()
        meta = json.loads((tmp_path / f / "seed0" / "checkpoint" / "meta.json").read_text())
        assert len(meta["world_sha256"]) == 64, f  # a moved run finds its world by content (export.locate_world)
    tokens = {f: s["fusions"][f]["image tokens in seq"]["mean"] for f in FUSIONS}
    assert tokens["cross_attention"] == 1 and tokens["concat"] == 4 and tokens["resampler"] == 8  # num_queries default
    md = (tmp_path / "fusion.md").read_text()
    assert all(f"| {f} |" in md for f in FUSIONS)
    assert (tmp_path / "fusion.png").stat().st_size > 10_000 and (tmp_path / "report.html").is_file()
