"""Position-wise feed-forward layers. Each names its residual output projection `out_proj`."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class SwiGLU(nn.Module):
    """Gated MLP of Llama-style decoders: out_proj(silu(gate(x)) * up(x))."""

    def __init__(self, *, dim: int, hidden_dim: int):
        super().__init__()
        self.gate = nn.Linear(dim, hidden_dim, bias=False)
        self.up = nn.Linear(dim, hidden_dim, bias=False)
        self.out_proj = nn.Linear(hidden_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, dim) -> (B, T, dim)
        return self.out_proj(F.silu(self.gate(x)) * self.up(x))  # (B, T, hidden) inside


class GeluMLP(nn.Module):
    """The plain two-layer MLP of ViT blocks."""

    def __init__(self, *, dim: int, hidden_dim: int):
        super().__init__()
        self.fc = nn.Linear(dim, hidden_dim)
        self.out_proj = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, dim) -> (B, T, dim)
        return self.out_proj(F.gelu(self.fc(x)))
