"""The built-in world a recipe trains on: config's world.dir when set, else generated into OUT/world once, and
again when the world there is not the one the config asks for (its settings or the generator's version differ)."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mmdialog.config import Config
from mmdialog.data.worlds.shapes import generate_world
from mmdialog.data.worlds.shapes.heldout import KINDS, parse_kinds
from mmdialog.data.worlds.shapes.io import VERSION


def ensure_world(cfg: Config, out: Path, progress: bool = True, log=print) -> Path:
    if cfg.world.dir:
        return Path(cfg.world.dir)
    world = out / "world"
    stale = world_differs(world, cfg) if (world / "world.json").is_file() else None
    if stale:
        log(f"world: {world} is not the world the config asks for ({stale}); generating it again")
    if stale or not (world / "world.json").is_file():
        t = time.perf_counter()
        generate_world(world, dialogues=cfg.world.dialogues, seed=cfg.world.seed, image_size=cfg.world.image_size,
                       phrasing=cfg.world.phrasing, held_out=cfg.world.held_out, progress=progress)
        log(f"world: {cfg.world.dialogues} dialogues in {time.perf_counter() - t:.1f}s -> {world}")
    return world


def world_differs(world: Path, cfg: Config) -> str | None:
    """What differs between the world in `world` and the one cfg.world describes, or None when it is that world."""
    try:
        meta = json.loads((world / "world.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"its world.json cannot be read: {e}"
    w, settings = cfg.world, meta.get("settings") or {}
    held = sorted((meta.get("heldout") or {}).get("splits") or {})
    have = {"generator version": meta.get("version"), "seed": meta.get("seed"),
            "dialogues": sum((meta.get("counts") or {}).values()), "image_size": settings.get("image_size"),
            "phrasing": settings.get("phrasing"), "held_out": held}
    want = {"generator version": VERSION, "seed": w.seed, "dialogues": w.dialogues, "image_size": w.image_size,
            "phrasing": w.phrasing, "held_out": sorted(KINDS[k] for k in parse_kinds(w.held_out))}
    diff = [f"{k} {have[k]!r}, asked {want[k]!r}" for k in want if have[k] != want[k]]
    return "; ".join(diff) or None
