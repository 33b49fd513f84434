"""An oracle image encoder for the shapes world, for diagnosis only: it reads every 16x16 cell of a render
exactly (flat colours on a grey background, no anti-aliasing) and gives one token per cell, a learned
projection of the one-hot (shape or empty, colour, size, row, column). With it in place of the ViT, a
learning curve measures the decoder alone: how fast it learns the lookups when the picture is read
perfectly. Registered as the image encoder `shapes_oracle` when this module is imported.

    python benchmarks/learning_curve.py --variant vit: --variant oracle:model.image.name=shapes_oracle
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mmdialog.data.worlds.shapes.scene import COLOURS, GRID, SHAPES
from mmdialog.registry import ENCODERS

_RGB = torch.tensor(list(COLOURS.values()), dtype=torch.float32) / 127.5 - 1  # (6, 3) in [-1, 1]
_FEATURES = (len(SHAPES) + 1) + len(COLOURS) + 2 + GRID + GRID  # shape|empty, colour, size, row, col


def cell_labels(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> (N, GRID*GRID, _FEATURES) one-hot features, cells row-major."""
    n, _, h, w = images.shape
    c = h // GRID
    x = images.float().reshape(n, 3, GRID, c, GRID, c).permute(0, 2, 4, 1, 3, 5).reshape(n, GRID * GRID, 3, c, c)
    chroma = x.amax(2) - x.amin(2)  # (N, 16, c, c): 0 on the grey background
    mask = chroma > 0.3
    area = mask.flatten(2).sum(-1).float()  # (N, 16)
    present = area > 0
    # colour: the mean of the object's pixels, nearest of the palette
    mean = (x * mask[:, :, None]).flatten(3).sum(-1) / area.clamp(min=1)[..., None]  # (N, 16, 3)
    colour = torch.cdist(mean, _RGB.to(mean.device)[None].expand(n, -1, -1)).argmin(-1)
    # shape: how much of its bounding box the object fills (square ~1, circle ~0.79, triangle ~0.5)
    rows, cols = mask.any(3), mask.any(2)  # (N, 16, c)
    bbox = rows.sum(-1).float() * cols.sum(-1).float()
    fill = area / bbox.clamp(min=1)
    shape = torch.where(fill > 0.9, SHAPES.index("square"), torch.where(fill > 0.65, SHAPES.index("circle"),
                                                                          SHAPES.index("triangle")))
    shape = torch.where(present, shape, len(SHAPES))
    large = (area > (c * c) * 0.3).long()  # small ~38 px, large ~129 px of 256 at 64x64
    cell = torch.arange(GRID * GRID, device=images.device).expand(n, -1)
    parts = [nn.functional.one_hot(shape, len(SHAPES) + 1),
             nn.functional.one_hot(colour, len(COLOURS)) * present[..., None],
             nn.functional.one_hot(large, 2) * present[..., None],
             nn.functional.one_hot(cell // GRID, GRID), nn.functional.one_hot(cell % GRID, GRID)]
    return torch.cat(parts, -1).float()


@ENCODERS.register("shapes_oracle")
class ShapesOracleEncoder(nn.Module):
    """(N, 3, H, W) -> (N, 16, dim): a learned projection of each cell's exact labels, then LayerNorm."""

    def __init__(self, *, image_size: int = 64, dim: int = 128, **_ignored):
        super().__init__()
        self.image_size, self.dim, self.num_tokens, self.num_levels = image_size, dim, GRID * GRID, 1
        self.proj = nn.Linear(_FEATURES, dim)
        self.norm = nn.LayerNorm(dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(cell_labels(images).to(self.proj.weight.dtype)))

    def forward_levels(self, images: torch.Tensor, levels) -> torch.Tensor:
        return self.forward(images)[:, None]
