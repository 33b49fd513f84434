"""ensure_world: a recipe reuses OUT/world only when it is the world the config asks for."""

import json

from mmdialog.config import load_config
from mmdialog.data.worlds.shapes.io import VERSION
from mmdialog.recipes.world import ensure_world, world_differs


def test_a_world_is_reused_only_when_it_is_the_one_asked_for(tmp_path):
    cfg = load_config(None, ["world.dialogues=20", "world.seed=3"])
    logs = []
    world = ensure_world(cfg, tmp_path, progress=False, log=logs.append)
    assert world_differs(world, cfg) is None and len(logs) == 1
    made = (world / "train.jsonl").stat().st_mtime_ns
    ensure_world(cfg, tmp_path, progress=False, log=logs.append)  # the same world: reused
    assert len(logs) == 1 and (world / "train.jsonl").stat().st_mtime_ns == made

    other = load_config(None, ["world.dialogues=30", "world.seed=4", "world.held_out=[paraphrase]"])
    reason = world_differs(world, other)
    assert "seed 3, asked 4" in reason and "dialogues 20, asked 30" in reason and "test_paraphrase" in reason
    ensure_world(other, tmp_path, progress=False, log=logs.append)
    assert "generating it again" in logs[1] and world_differs(world, other) is None
    assert json.loads((world / "world.json").read_text())["counts"]["train"] == 24

    meta = json.loads((world / "world.json").read_text())
    meta["version"] = VERSION - 1  # a world an earlier generator wrote
    (world / "world.json").write_text(json.dumps(meta))
    assert world_differs(world, other) == f"generator version {VERSION - 1}, asked {VERSION}"
