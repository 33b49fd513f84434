"""The pre-norm residual transformer block, built from the attention, MLP and norms it is given."""

from __future__ import annotations

import torch
import torch.nn as nn

from mmdialog.modules.attention import Attention
from mmdialog.modules.kv_cache import KVCache


class TransformerBlock(nn.Module):
    """x + attn(attn_norm(x)), then + mlp(mlp_norm(x)); dropout on each branch before it joins the residual."""

    def __init__(self, *, attn: Attention, mlp: nn.Module, attn_norm: nn.Module, mlp_norm: nn.Module,
                 dropout: float = 0.0):
        super().__init__()
        self.attn_norm = attn_norm
        self.attn = attn
        self.mlp_norm = mlp_norm
        self.mlp = mlp
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, *, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:  # (B, T, C) -> (B, T, C)
        x = x + self.dropout(self.attn(self.attn_norm(x), positions=positions, mask=mask, cache=cache, layer=layer))
        x = x + self.dropout(self.mlp(self.mlp_norm(x)))
        return x
