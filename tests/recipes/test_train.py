"""`mmdialog train` (recipes/train.py) hands the trainer its validator: train.eval_every validates on the world."""

import json
from pathlib import Path

from mmdialog.config import load_config
from mmdialog.recipes.train import main

SMOKE = Path(__file__).resolve().parents[2] / "configs" / "tiny" / "smoke.yaml"


def test_train_validates_every_n_steps_on_the_world(world32, tmp_path):
    world, _ = world32
    cfg = load_config(SMOKE, [f"world.dir={world}", "train.num_threads=1", "train.precision=fp32",
                              "train.max_steps=4", "train.eval_every=2", "train.eval_max_records=2"])
    assert main(cfg, tmp_path) == 0
    log = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    val = [x for x in log if "val_accuracy" in x]
    assert [v["step"] for v in val] == [2, 4] and all(v["val_turns"] > 2 for v in val)
