"""Pieces the encoders share: a bidirectional transformer stack, level selection, weight init."""

from __future__ import annotations

import torch
import torch.nn as nn

from mmdialog.errors import MMDialogError
from mmdialog.modules import Attention, GeluMLP, TransformerBlock


def encoder_blocks(*, dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.ModuleList:
    """depth pre-norm transformer blocks in which every token sees every other (no mask, no RoPE)."""
    return nn.ModuleList(
        TransformerBlock(
            attn=Attention(dim=dim, heads=heads, causal=False, bias=True),
            mlp=GeluMLP(dim=dim, hidden_dim=int(dim * mlp_ratio)),
            attn_norm=nn.LayerNorm(dim),
            mlp_norm=nn.LayerNorm(dim),
        )
        for _ in range(depth)
    )


def init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def select_levels(features: list[torch.Tensor], levels, encoder: str) -> torch.Tensor:
    """features: num_levels tensors (N, T, d), level 0 the embedding and the last the output.
    Returns the chosen levels stacked (N, L, T, d); negative indices count from the last level."""
    n = len(features)
    picked = []
    for lv in levels:
        if not -n <= lv < n:
            raise MMDialogError(f"model.fusion.levels asks for level {lv} but the {encoder} encoder has levels "
                                f"0..{n - 1} (or -{n}..-1)")
        picked.append(features[lv])
    return torch.stack(picked, 1)


def check_input(x: torch.Tensor, expected: tuple, what: str) -> None:
    """Raise naming the expected and the given shape; None in expected matches any size."""
    if x.dim() != len(expected) or any(e is not None and e != g for e, g in zip(expected, x.shape)):
        shape = ", ".join("N" if e is None else str(e) for e in expected)
        raise MMDialogError(f"the {what} takes ({shape}), got a tensor of shape {tuple(x.shape)}")
