"""Attention of one sequence over another (text over media, media over text, latents over media).

The keys and values are computed apart from the queries (`kv`), so that a fusion can compute them once
per media item and keep them in a KV cache's media memory while the queries change every step.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdialog.errors import MMDialogError


class CrossAttention(nn.Module):
    """Queries from x (B, T, dim), keys and values from a memory (B, M, kv_dim), a boolean mask (B, T, M).

    Every query also sees one null entry (key 0, value 0): a query that may see no memory entry (text
    before the first image) then gets exactly 0 instead of the NaN of an empty softmax.
    """

    def __init__(self, *, dim: int, heads: int, kv_dim: int | None = None, bias: bool = False):
        super().__init__()
        if dim % heads:
            raise MMDialogError(f"cross-attention width {dim} is not divisible by {heads} heads")
        kv_dim = kv_dim or dim
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj = nn.Linear(dim, dim, bias=bias)
        self.kv_proj = nn.Linear(kv_dim, 2 * dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)

    def kv(self, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, M, kv_dim) -> keys, values (B, M, dim) each."""
        return self.kv_proj(memory).chunk(2, dim=-1)

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, dim); keys, values: (B, M, dim) from kv(); mask: (B, T, M), True = attend. Returns (B, T, dim)."""
        B, T, D = x.shape
        M, H, hs = keys.shape[1], self.heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, hs).transpose(1, 2)  # (B, H, T, hs)
        null = keys.new_zeros(B, 1, D)
        k = torch.cat([keys, null], 1).view(B, M + 1, H, hs).transpose(1, 2)  # (B, H, M+1, hs)
        v = torch.cat([values, null.to(values.dtype)], 1).view(B, M + 1, H, hs).transpose(1, 2)
        if mask is not None:
            mask = torch.cat([mask, mask.new_ones(B, T, 1)], 2)[:, None]  # (B, 1, T, M+1)
        dtype = q.dtype
        if q.device.type == "cpu" and dtype == torch.bfloat16:  # as in Attention: the fp32 CPU kernel is faster
            q, k, v = q.float(), k.float(), v.float()
        y = F.scaled_dot_product_attention(q, k.to(q.dtype), v.to(q.dtype), attn_mask=mask).to(dtype)  # (B, H, T, hs)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))
