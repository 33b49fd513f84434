"""Image encoders: a small vision transformer (every patch one token, no CLS token) and a small residual CNN.

Both take (N, 3, H, W) pixels normalised to [-1, 1] and give (N, num_tokens, dim); forward_levels gives
(N, L, num_tokens, dim) at chosen depths for the hierarchical and dynamic fusions.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdialog.encoders.common import TransformerEncoder, check_input, select_levels
from mmdialog.errors import MMDialogError
from mmdialog.registry import ENCODERS


@ENCODERS.register("vit")
class ViTEncoder(TransformerEncoder):
    """(N, 3, H, W) pixels normalised to [-1, 1] -> (N, num_tokens, dim), num_tokens = (image_size // patch_size)**2.

    Stem: a Conv2d with kernel = stride = patch_size, one token per patch (row-major); the rest is the
    TransformerEncoder skeleton (level 0 the patch embeddings, level i after block i)."""

    NAME = "vit"

    def __init__(self, *, image_size: int = 64, patch_size: int = 16, dim: int = 128, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 4.0):
        if image_size % patch_size:
            raise MMDialogError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        super().__init__(stem={"patch_embed": nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)},
                         num_tokens=(image_size // patch_size) ** 2, dim=dim, depth=depth, heads=heads,
                         mlp_ratio=mlp_ratio)
        self.image_size = image_size

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2:] != (self.image_size, self.image_size):
            raise MMDialogError(
                f"the image encoder takes (N, 3, {self.image_size}, {self.image_size}) pixels, "
                f"got a tensor of shape {tuple(images.shape)}"
            )
        x = self.patch_embed(images)  # (N, dim, g, g), g = image_size // patch_size
        return x.flatten(2).transpose(1, 2)  # (N, g*g, dim), patches in row-major order


class ResidualBlock(nn.Module):
    """conv3x3-GroupNorm-GELU-conv3x3-GroupNorm plus the input (1x1-projected when the shape changes).

    GroupNorm rather than BatchNorm: an image's encoding must not depend on the other images in its batch
    (a chat session encodes one at a time, training a batch)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(_groups(c_out), c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(_groups(c_out), c_out)
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.GroupNorm(_groups(c_out), c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, c_in, h, w) -> (N, c_out, h/stride, w/stride)
        y = F.gelu(self.norm1(self.conv1(x)))
        return F.gelu(self.norm2(self.conv2(y)) + self.skip(x))


def _groups(c: int) -> int:
    return next(g for g in (8, 4, 2, 1) if c % g == 0)


@ENCODERS.register("resnet")
class ResNetEncoder(nn.Module):
    """A small ResNet: a stride-2 stem, then one stage per width (the first at stride 1, the others at 2),
    `blocks` residual blocks each. Every cell of the last feature map is one token:
    num_tokens = (image_size / 2**len(widths))**2, projected to dim.

    Levels: the stem and each stage, average-pooled to the last map's grid and projected to dim
    (one 1x1 projection per level), so that every level has the same tokens.
    """

    def __init__(self, *, image_size: int = 64, dim: int = 128, widths: tuple[int, ...] = (32, 64, 128),
                 blocks: int = 1):
        super().__init__()
        stride = 2 ** len(widths)
        if image_size % stride:
            raise MMDialogError(f"the resnet encoder downsamples by {stride} (a stem and {len(widths) - 1} strided "
                                f"stages); image size {image_size} is not a multiple of it")
        self.image_size, self.dim = image_size, dim
        self.grid = image_size // stride
        self.num_tokens = self.grid ** 2
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, stride=2, padding=1, bias=False),
                                  nn.GroupNorm(_groups(widths[0]), widths[0]), nn.GELU())
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            layers = [ResidualBlock(c, w, 1 if i == 0 else 2)] + [ResidualBlock(w, w, 1) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            c = w
        self.stages = nn.ModuleList(stages)
        self.level_proj = nn.ModuleList(nn.Conv2d(w, dim, 1) for w in (widths[0], *widths))
        self.norm = nn.LayerNorm(dim)
        self.num_levels = len(widths) + 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.forward_levels(images, (-1,))[:, 0]

    def forward_levels(self, images: torch.Tensor, levels) -> torch.Tensor:
        """(N, 3, H, W) -> (N, L, num_tokens, dim): level 0 the stem, level i after stage i."""
        check_input(images, (None, 3, self.image_size, self.image_size), "resnet encoder")
        wanted = {lv % self.num_levels for lv in levels if -self.num_levels <= lv < self.num_levels}
        maps = [self.stem(images)]  # (N, w0, H/2, W/2)
        for stage in self.stages:
            maps.append(stage(maps[-1]))  # (N, w_i, ...)
        feats = []
        for i, (m, proj) in enumerate(zip(maps, self.level_proj)):
            if i not in wanted:
                feats.append(None)
                continue
            m = F.adaptive_avg_pool2d(m, self.grid) if m.shape[-1] != self.grid else m  # (N, w_i, g, g)
            feats.append(self.norm(proj(m).flatten(2).transpose(1, 2)))  # (N, g*g, dim), row-major
        return select_levels(feats, levels, "resnet")
