"""Rotary position embedding (RoPE), computed in fp32 whatever the activations' dtype."""

from __future__ import annotations

import torch
import torch.nn as nn

from mmdialog.errors import MMDialogError


class RotaryEmbedding(nn.Module):
    """Rotates pairs of channels (i, i + hs/2) of queries or keys by an angle proportional to their position.

    The dot product of a rotated query at position m and a rotated key at position n then depends on
    m - n only, which is why a cache can be fed at any offset and why left padding is harmless.
    """

    def __init__(self, *, head_dim: int, theta: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise MMDialogError(f"rotary embedding needs an even head dimension, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """x: (B, nh, T, hs); positions: (T,) or (B, T) absolute positions. Returns x's shape and dtype."""
        hs = self.head_dim
        # Built on the fly rather than kept as a buffer: a buffer would be cast to bf16 by model.to(),
        # and bf16 angles are off by whole radians at positions in the hundreds.
        inv_freq = 1.0 / self.theta ** (torch.arange(0, hs, 2, device=x.device, dtype=torch.float32) / hs)  # (hs/2,)
        angles = positions.to(torch.float32)[..., None] * inv_freq  # (T, hs/2) or (B, T, hs/2)
        if angles.dim() == 3:
            angles = angles[:, None]  # (B, 1, T, hs/2): the same positions for every head
        cos, sin = angles.cos(), angles.sin()
        x1, x2 = x.float().chunk(2, dim=-1)  # (B, nh, T, hs/2) each
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)  # (B, nh, T, hs)
        return rotated.type_as(x)
