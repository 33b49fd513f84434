"""The demo's wall-clock budget: training gets what the world and the timed evaluation leave."""

import time
from dataclasses import replace

import pytest

from mmdialog.config import Config
from mmdialog.data.worlds.shapes import generate_world, load_split
from mmdialog.recipes.demo import TAIL_SECONDS, budget_training, estimate_eval_seconds


def cfg_with(demo_minutes: float, max_minutes: float) -> Config:
    c = Config()
    return replace(c, eval=replace(c.eval, demo_minutes=demo_minutes), train=replace(c.train, max_minutes=max_minutes))


def test_training_gets_what_the_budget_leaves_capped_and_floored():
    t0 = time.perf_counter() - 60  # a minute spent on the world
    lines = []
    fast = budget_training(cfg_with(10, 6.5), t0, eval_seconds=120, log=lines.append)
    assert fast.train.max_minutes == 6.5  # 600 - 60 - 120 - 30 s would allow 6.5 min: the cap holds
    slow = budget_training(cfg_with(10, 6.5), t0, eval_seconds=300, log=lines.append)
    assert slow.train.max_minutes == pytest.approx((600 - 60 - 300 - TAIL_SECONDS) / 60, abs=0.02)
    assert budget_training(cfg_with(10, 6.5), t0, eval_seconds=2000, log=lines.append).train.max_minutes == 1.0
    uncapped = budget_training(cfg_with(10, 0), t0, eval_seconds=120, log=lines.append)
    assert uncapped.train.max_minutes == pytest.approx((600 - 60 - 120 - TAIL_SECONDS) / 60, abs=0.02)
    assert "training gets 6.5 min" in lines[0] and "evaluation estimated at 300s" in lines[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = tmp_path_factory.mktemp("world")
    generate_world(out, dialogues=30, seed=1, image_size=32, progress=False, held_out="all", held_out_dialogues=2)
    return out


def test_the_evaluation_estimate_grows_with_the_dialogues_it_covers(tiny, world):
    model, proc = tiny
    records = load_split(world, "test")
    few = estimate_eval_seconds(model, proc, records[:2], world, max_new_tokens=4)
    assert few > 0
    # two dialogues: both probes are the same 2, scaled; eighty: the line through 4 and 16 extrapolated
    many = estimate_eval_seconds(model, proc, records[:2] * 40, world, max_new_tokens=4)
    assert many > 5 * few
