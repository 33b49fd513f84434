"""A tiny world and recipe for in-process training tests: a few steps take well under a second."""

from pathlib import Path

import pytest

from mmdialog.config import load_config

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ROOT / "configs" / "tiny" / "smoke.yaml"
# one thread: bitwise comparisons need the same reduction order, and the test machine's cores are shared
FAST = ["train.num_threads=1", "train.precision=fp32", "train.log_every=1"]


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory) -> Path:
    from mmdialog.data.worlds.shapes import generate_world

    cfg = load_config(SMOKE)
    world = tmp_path_factory.mktemp("world")
    generate_world(world, dialogues=cfg.world.dialogues, seed=cfg.world.seed, image_size=cfg.world.image_size,
                   progress=False)
    return world


def smoke_config(*overrides: str):
    return load_config(SMOKE, FAST + list(overrides))


def run(cfg, world, out, **kw):
    """prepare + train in this process; returns (model, tokenizer, dataset, result)."""
    from mmdialog.train.trainer import prepare, train

    tokenizer, model, _, dataset = prepare(cfg, world, progress=False)
    result = train(cfg, model, tokenizer, dataset, out, progress=False, log=lambda *a: None, **kw)
    return model, tokenizer, dataset, result
