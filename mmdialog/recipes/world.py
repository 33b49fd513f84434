"""The built-in world a recipe trains on: config's world.dir when set, else generated once into OUT/world."""

from __future__ import annotations

import time
from pathlib import Path

from mmdialog.config import Config
from mmdialog.data.worlds.shapes import generate_world


def ensure_world(cfg: Config, out: Path, progress: bool = True, log=print) -> Path:
    if cfg.world.dir:
        return Path(cfg.world.dir)
    world = out / "world"
    if not (world / "world.json").is_file():
        t = time.perf_counter()
        generate_world(world, dialogues=cfg.world.dialogues, seed=cfg.world.seed, image_size=cfg.world.image_size,
                       phrasing=cfg.world.phrasing, held_out=cfg.world.held_out, progress=progress)
        log(f"world: {cfg.world.dialogues} dialogues in {time.perf_counter() - t:.1f}s -> {world}")
    return world
