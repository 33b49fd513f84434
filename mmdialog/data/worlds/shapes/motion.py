"""Clips of the shapes world: 2 to 4 shapes of distinct colours, each moving in a straight line along the
cell grid (left, right, up or down), slowly (1 cell over the clip) or fast (2 cells), or staying still.

No two shapes' paths share a cell, so shapes never overlap and each keeps its colour in every frame.
All shapes move for the whole clip, so "farther" and "faster" are the same thing. Positions are
integers computed with integer arithmetic: frame t of F puts a shape at start + (end - start) * t / (F - 1),
rounded half up, so the frames (and the APNG bytes) depend only on the clip.
"""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image as PILImage

from mmdialog.data.worlds.shapes.render import render
from mmdialog.data.worlds.shapes.scene import (
    BACKGROUND, BACKGROUND_JITTER, COLOURS, GRID, SHAPES, SIZES, Draws, Obj, Scene, check_image_size,
)

DIRECTIONS = ("left", "right", "up", "down")
STEP = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0), "nowhere": (0, 0)}  # (rows, cols)
SPEEDS = {"slow": 1, "fast": 2}  # cells covered over the whole clip
SPEED_WORDS = {"slow": "slowly", "fast": "fast"}  # the answer to "Does it move fast or slowly?"
MIN_SHAPES, MAX_SHAPES = 2, 4
CLIP_FRAMES = 16  # frames per clip: any frame budget up to 16 samples it evenly
FRAME_MS = 100  # delay between frames in the APNG (the clip lasts 1.6 s)
P_STILL = 0.2  # chance that a shape stays still (at least one shape always moves)


@dataclass(frozen=True, slots=True)
class Mover:
    """A shape of a clip: its look, its start cell and how it moves."""

    shape: str
    colour: str
    size: str
    row: int  # start cell
    col: int
    direction: str  # one of DIRECTIONS, or "nowhere"
    speed: str | None  # "slow" / "fast"; None when still

    @property
    def cells(self) -> int:
        """Cells covered over the clip: 0, 1 (slow) or 2 (fast)."""
        return SPEEDS[self.speed] if self.speed else 0

    @property
    def end(self) -> tuple[int, int]:
        dr, dc = STEP[self.direction]
        return self.row + dr * self.cells, self.col + dc * self.cells

    def path(self) -> list[tuple[int, int]]:
        dr, dc = STEP[self.direction]
        return [(self.row + dr * k, self.col + dc * k) for k in range(self.cells + 1)]

    def get(self, attr: str) -> str:
        return getattr(self, attr)

    def matches(self, desc: dict[str, str]) -> bool:
        return all(getattr(self, a) == v for a, v in desc.items())

    def to_dict(self, size: int) -> dict:
        cell = size // GRID
        (r1, c1) = self.end
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "row": self.row, "col": self.col,
                "direction": self.direction, "speed": self.speed, "cells": self.cells, "end_row": r1, "end_col": c1,
                "x0": self.col * cell + cell // 2, "y0": self.row * cell + cell // 2,
                "x1": c1 * cell + cell // 2, "y1": r1 * cell + cell // 2}


@dataclass(frozen=True)
class Clip:
    size: int  # frame side in pixels
    movers: tuple[Mover, ...]
    background: int
    frames: int = CLIP_FRAMES

    def matching(self, desc: dict[str, str]) -> list[int]:
        return [i for i, m in enumerate(self.movers) if m.matches(desc)]

    def position(self, i: int, t: int) -> tuple[int, int]:
        """Centre pixel (x, y) of shape i in frame t: integer interpolation, rounded half up."""
        m, cell, last = self.movers[i], self.size // GRID, self.frames - 1
        x0, y0 = m.col * cell + cell // 2, m.row * cell + cell // 2
        (r1, c1) = m.end
        x1, y1 = c1 * cell + cell // 2, r1 * cell + cell // 2
        return x0 + ((x1 - x0) * t * 2 + last) // (2 * last), y0 + ((y1 - y0) * t * 2 + last) // (2 * last)

    def frame(self, t: int) -> PILImage.Image:
        objs = []
        for i, m in enumerate(self.movers):
            x, y = self.position(i, t)
            objs.append(Obj(m.shape, m.colour, m.size, m.row, m.col, x, y))
        return render(Scene(self.size, tuple(objs), self.background))

    def to_dict(self) -> dict:
        return {"size": self.size, "frames": self.frames, "frame_ms": FRAME_MS, "background": self.background,
                "objects": [m.to_dict(self.size) for m in self.movers]}

    @classmethod
    def from_dict(cls, d: dict) -> "Clip":
        movers = tuple(Mover(o["shape"], o["colour"], o["size"], o["row"], o["col"], o["direction"], o["speed"])
                       for o in d["objects"])
        return cls(int(d["size"]), movers, int(d["background"]), int(d.get("frames", CLIP_FRAMES)))


def sample_clip(draws: Draws, image_size: int = 64, *, exclude_pairs=None) -> Clip:
    """A random clip: 2-4 shapes of distinct colours on free start cells, each path inside the grid and
    sharing no cell with another shape's path; at least one shape moves. exclude_pairs: (shape, colour)
    pairs no shape may have (its shape is drawn again; None draws exactly as without)."""
    check_image_size(image_size)
    n = MIN_SHAPES + draws.below(MAX_SHAPES - MIN_SHAPES + 1)
    colours = draws.sample(tuple(COLOURS), n)
    taken: set[tuple[int, int]] = set()
    movers: list[Mover] = []
    for k, colour in enumerate(colours):
        shape, size = draws.choice(SHAPES), draws.choice(SIZES)
        while exclude_pairs and (shape, colour) in exclude_pairs:
            shape = draws.choice(SHAPES)
        still = k > 0 and draws.random() < P_STILL  # the first shape always moves
        for attempt in range(60):  # rejection: a start cell and a move whose path is free and inside the grid
            still = still or attempt >= 40  # crowded: a still shape always finds a free cell
            row, col = draws.below(GRID), draws.below(GRID)
            direction, speed = ("nowhere", None) if still else (draws.choice(DIRECTIONS), draws.choice(tuple(SPEEDS)))
            m = Mover(shape, colour, size, row, col, direction, speed)
            path = m.path()
            if all(0 <= r < GRID and 0 <= c < GRID for r, c in path) and not taken.intersection(path):
                taken.update(path)
                movers.append(m)
                break
    background = BACKGROUND + draws.below(2 * BACKGROUND_JITTER + 1) - BACKGROUND_JITTER
    return Clip(image_size, tuple(movers), background)


def clip_frames(clip: Clip) -> list[PILImage.Image]:
    return [clip.frame(t) for t in range(clip.frames)]
