"""Scenes of the shapes world: 3 to 7 objects on a 4x4 grid, at most one per cell.

One object per cell means that, with a ViT of patch 16 on a 64x64 image, every image
token sees at most one object: the grid is the patch grid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mmdialog.errors import MMDialogError

SHAPES = ("circle", "square", "triangle")
# Far apart in RGB and from the grey background, so a colour is never a judgement call.
COLOURS = {
    "red": (220, 40, 40),
    "green": (30, 160, 60),
    "blue": (40, 80, 230),
    "yellow": (240, 200, 20),
    "purple": (150, 60, 190),
    "cyan": (30, 200, 210),
}
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
ATTRIBUTES = ("shape", "colour", "size", "position")
VALUES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": SIZES, "position": POSITIONS}

GRID = 4
MIN_OBJECTS, MAX_OBJECTS = 3, 7
BACKGROUND = 205  # grey level of the background before the per-image shift
BACKGROUND_JITTER = 12  # each image shifts the grey by up to this much, either way


def quadrant(row: int, col: int) -> str:
    """The position word of a cell: rows 0-1 are top, cols 0-1 are left (for the 4x4 grid)."""
    half = GRID // 2
    return f"{'top' if row < half else 'bottom'} {'left' if col < half else 'right'}"


def jitter_px(image_size: int) -> int:
    """How far (pixels) an object's centre may move from its cell's centre: 1 px at 64, 0 at 32."""
    return (image_size // GRID) // 16


@dataclass(frozen=True, slots=True)
class Obj:
    shape: str
    colour: str
    size: str
    row: int
    col: int
    x: int  # centre pixel, column index in the image
    y: int  # centre pixel, row index in the image

    @property
    def position(self) -> str:
        return quadrant(self.row, self.col)

    def get(self, attr: str) -> str:
        return getattr(self, attr)

    def matches(self, desc: dict[str, str]) -> bool:
        return all(getattr(self, a) == v for a, v in desc.items())

    def to_dict(self) -> dict:
        return {"shape": self.shape, "colour": self.colour, "size": self.size, "row": self.row, "col": self.col,
                "x": self.x, "y": self.y, "position": self.position}


@dataclass(frozen=True)
class Scene:
    size: int  # image side in pixels
    objects: tuple[Obj, ...]  # in cell order (row-major)
    background: int  # grey level of this image's background

    def matching(self, desc: dict[str, str]) -> list[int]:
        """Indices of the objects that have every attribute value in `desc`."""
        return [i for i, o in enumerate(self.objects) if o.matches(desc)]

    def to_dict(self) -> dict:
        return {"size": self.size, "background": self.background, "objects": [o.to_dict() for o in self.objects]}

    @classmethod
    def from_dict(cls, d: dict) -> "Scene":
        objs = tuple(Obj(o["shape"], o["colour"], o["size"], o["row"], o["col"], o["x"], o["y"]) for o in d["objects"])
        return cls(int(d["size"]), objs, int(d.get("background", BACKGROUND)))


class Draws:
    """Uniform draws from a numpy Generator, fetched in blocks.

    numpy costs ~1-3 us per call; one dialogue needs ~100 small draws, so fetching
    them 256 at a time keeps generation of 10k dialogues within a few seconds.
    """

    def __init__(self, rng: np.random.Generator, block: int = 256):
        self._rng = rng
        self._block = block
        self._buf: list[float] = []

    def random(self) -> float:
        if not self._buf:
            self._buf = self._rng.random(self._block).tolist()[::-1]
        return self._buf.pop()

    def below(self, n: int) -> int:
        return min(int(self.random() * n), n - 1)

    def choice(self, seq):
        return seq[self.below(len(seq))]

    def sample(self, seq, k: int) -> list:
        """k distinct items of seq, in random order."""
        pool = list(seq)
        out = []
        for _ in range(k):
            out.append(pool.pop(self.below(len(pool))))
        return out

    def weighted_order(self, weights: dict[str, float]) -> list[str]:
        """Keys in a random order where each next key is drawn with probability ∝ its weight.

        Trying templates in this order and keeping the first feasible one picks among
        the feasible ones with probability ∝ weight (exponential-race argument).
        """
        keys = [(-math.log(1.0 - self.random()) / w, k) for k, w in weights.items() if w > 0]
        keys.sort()
        return [k for _, k in keys]


def check_image_size(image_size: int) -> None:
    if not isinstance(image_size, int) or image_size < 32 or image_size % GRID:
        raise MMDialogError(f"image_size must be an integer >= 32 divisible by {GRID}, got {image_size!r}")


def sample_scene(draws: Draws, image_size: int = 64, *, exclude_pairs=None, require_pairs=None) -> Scene:
    """A random scene: 3-7 objects in distinct cells, uniform attributes, small centre jitter.

    Held-out attribute combinations (see heldout.py); both default to None, which draws exactly as before:
    exclude_pairs: (shape, colour) pairs no object may have (its colour is drawn again);
    require_pairs: at least one object has one of these pairs (if none drew one, a drawn object gets one).
    """
    check_image_size(image_size)
    cell = image_size // GRID
    jit = jitter_px(image_size)
    n = MIN_OBJECTS + draws.below(MAX_OBJECTS - MIN_OBJECTS + 1)
    cells = sorted(draws.sample(range(GRID * GRID), n))
    objs = []
    for c in cells:
        row, col = divmod(c, GRID)
        shape, colour, size = draws.choice(SHAPES), draws.choice(VALUES["colour"]), draws.choice(SIZES)
        while exclude_pairs and (shape, colour) in exclude_pairs:
            colour = draws.choice(VALUES["colour"])
        x = col * cell + cell // 2 + draws.below(2 * jit + 1) - jit
        y = row * cell + cell // 2 + draws.below(2 * jit + 1) - jit
        objs.append(Obj(shape, colour, size, row, col, x, y))
    if require_pairs and not any((o.shape, o.colour) in require_pairs for o in objs):
        j = draws.below(len(objs))
        shape, colour = draws.choice(sorted(require_pairs))
        o = objs[j]
        objs[j] = Obj(shape, colour, o.size, o.row, o.col, o.x, o.y)
    background = BACKGROUND + draws.below(2 * BACKGROUND_JITTER + 1) - BACKGROUND_JITTER
    return Scene(image_size, tuple(objs), background)
