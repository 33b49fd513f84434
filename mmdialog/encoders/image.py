"""A small vision transformer: every patch becomes one token for the decoder (no CLS token)."""

from __future__ import annotations

import torch
import torch.nn as nn

from mmdialog.errors import MMDialogError
from mmdialog.modules import Attention, GeluMLP, TransformerBlock
from mmdialog.registry import ENCODERS


@ENCODERS.register("vit")
class ViTEncoder(nn.Module):
    """(N, 3, H, W) pixels normalised to [-1, 1] -> (N, num_tokens, dim), num_tokens = (image_size // patch_size)**2."""

    def __init__(self, *, image_size: int, patch_size: int, dim: int, depth: int, heads: int, mlp_ratio: float):
        super().__init__()
        if image_size % patch_size:
            raise MMDialogError(f"image size {image_size} is not a multiple of the patch size {patch_size}")
        self.image_size = image_size
        self.num_tokens = (image_size // patch_size) ** 2
        self.dim = dim
        self.patch_embed = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens, dim))
        self.blocks = nn.ModuleList(
            TransformerBlock(
                attn=Attention(dim=dim, heads=heads, causal=False, bias=True),
                mlp=GeluMLP(dim=dim, hidden_dim=int(dim * mlp_ratio)),
                attn_norm=nn.LayerNorm(dim),
                mlp_norm=nn.LayerNorm(dim),
            )
            for _ in range(depth)
        )
        self.norm = nn.LayerNorm(dim)
        self.apply(_init_linear)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[2:] != (self.image_size, self.image_size):
            raise MMDialogError(
                f"the image encoder takes (N, 3, {self.image_size}, {self.image_size}) pixels, "
                f"got a tensor of shape {tuple(images.shape)}"
            )
        x = self.patch_embed(images)  # (N, dim, g, g), g = image_size // patch_size
        x = x.flatten(2).transpose(1, 2) + self.pos_embed  # (N, g*g, dim), patches in row-major order
        for block in self.blocks:
            x = block(x)  # bidirectional: every patch sees every other
        return self.norm(x)  # (N, num_tokens, dim)


def _init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
