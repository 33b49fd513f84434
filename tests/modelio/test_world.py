"""A checkpoint names its world by path and by world.json's digest: a moved or copied run still finds its world,
and a missing one is named when a command needs it."""

import shutil

import pytest

from mmdialog.errors import MMDialogError
from mmdialog.modelio import load_any, save_checkpoint, world_meta, world_of


def test_a_moved_run_finds_its_world_and_a_missing_one_is_named(tiny, tokenizer, tiny_cfg, tmp_path):
    model, _ = tiny
    run = tmp_path / "run"
    (run / "world").mkdir(parents=True)
    (run / "world" / "world.json").write_text('{"seed": 7}')
    save_checkpoint(run / "checkpoint", model, tokenizer, tiny_cfg, world_meta(run / "world"))
    assert load_any(run / "checkpoint").meta["world"] == str((run / "world").resolve())

    moved = tmp_path / "elsewhere" / "run"
    shutil.move(run, moved)
    ck = load_any(moved / "checkpoint")
    assert ck.meta["world"] == str(moved / "world") and "world_missing" not in ck.meta
    assert world_of(ck, None) == moved / "world"

    (moved / "world" / "world.json").write_text('{"seed": 8}')  # another world in its place is not taken for it
    ck = load_any(moved / "checkpoint")
    assert ck.meta["world_missing"] == str((run / "world").resolve())
    with pytest.raises(MMDialogError, match=r"trained on the world at .*run/world, which is not there .*pass --world"):
        world_of(ck, None)
    assert world_of(ck, str(moved / "world")) == moved / "world"  # --world still decides
