"""Multi-head self-attention: fused qkv, optional grouped-query kv heads, optional QK-norm, RoPE and KV cache."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdialog.errors import MMDialogError
from mmdialog.modules.kv_cache import KVCache
from mmdialog.modules.norms import RMSNorm
from mmdialog.modules.rope import RotaryEmbedding


class Attention(nn.Module):
    """Self-attention over F.scaled_dot_product_attention.

    causal=True and no mask takes SDPA's is_causal fast path, which is right only while the queries
    and keys cover the same positions (no cache, or a cache fed one token at a time). Every other
    case, including padding, needs an explicit boolean mask (B or 1, 1, T, S), True = attend, such as
    causal_mask() below builds.
    """

    # Off (None) by default. mmdialog.explain sets a list on the layers it inspects; each forward then also
    # appends its attention probabilities (B, nh, T, S), computed beside SDPA, whose output is unchanged.
    record: list | None = None

    def __init__(self, *, dim: int, heads: int, kv_heads: int | None = None, causal: bool,
                 rope: RotaryEmbedding | None = None, bias: bool = False, dropout: float = 0.0,
                 qk_norm: bool = False):
        super().__init__()
        kv_heads = kv_heads or heads
        if dim % heads:
            raise MMDialogError(f"attention width {dim} is not divisible by {heads} heads")
        if heads % kv_heads:
            raise MMDialogError(f"{heads} query heads cannot be shared evenly by {kv_heads} kv heads")
        self.heads, self.kv_heads, self.head_dim = heads, kv_heads, dim // heads
        self.causal = causal
        self.rope = rope
        self.dropout = dropout
        self.qkv = nn.Linear(dim, (heads + 2 * kv_heads) * self.head_dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        # QK-norm: RMSNorm of each head's queries and keys (learned scale per channel) before RoPE, as in
        # OLMo 2 and Gemma 3: attention logits stay bounded whatever the weights grow to.
        self.q_norm = RMSNorm(self.head_dim) if qk_norm else None
        self.k_norm = RMSNorm(self.head_dim) if qk_norm else None

    def forward(self, x: torch.Tensor, *, positions: torch.Tensor | None = None, mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer: int = 0) -> torch.Tensor:
        """x: (B, T, C); positions: (T,) or (B, T), needed with RoPE; cache: appended to at index `layer`."""
        B, T, C = x.shape
        hs = self.head_dim
        q, k, v = self.qkv(x).split([self.heads * hs, self.kv_heads * hs, self.kv_heads * hs], dim=-1)
        q = q.view(B, T, self.heads, hs).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.kv_heads, hs).transpose(1, 2)  # (B, nkv, T, hs)
        v = v.view(B, T, self.kv_heads, hs).transpose(1, 2)  # (B, nkv, T, hs)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            q, k = self.rope(q, positions), self.rope(k, positions)
        if cache is not None:
            k, v = cache.update(layer, k, v)  # (B, nkv, S, hs), S = cached + T
        if isinstance(mask, Segments):  # packed rows: each conversation attends to itself alone
            y = mask.attend(q, k, v, dropout=self.dropout if self.training else 0.0)  # (B, nh, T, hs)
            return self.out_proj(y.transpose(1, 2).reshape(B, T, C))
        S = k.shape[2]
        is_causal = self.causal and mask is None and T > 1
        if is_causal and S != T:
            raise ValueError(f"causal attention of {T} queries over {S} keys needs an explicit mask")
        dtype = q.dtype
        if q.device.type == "cpu" and dtype == torch.bfloat16:
            # On CPU the bf16 flash kernel's backward is ~5x slower than the fp32 one (benchmarks/train_step.py).
            q, k, v = q.float(), k.float(), v.float()
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, is_causal=is_causal, dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.kv_heads != self.heads,
        ).to(dtype)  # (B, nh, T, hs)
        if self.record is not None:
            self.record.append(attention_probs(q, k, mask, is_causal))
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.out_proj(y)


def attention_probs(q: torch.Tensor, k: torch.Tensor, mask: torch.Tensor | None, is_causal: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(hs)) under the mask SDPA was given: (B, nh, T, S); for inspection, not for speed."""
    if k.shape[1] != q.shape[1]:  # grouped-query: each kv head serves heads // kv_heads query heads
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = (q.float() @ k.float().transpose(-2, -1)) * q.shape[-1] ** -0.5  # (B, nh, T, S)
    if is_causal:
        mask = torch.ones(q.shape[2], k.shape[2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1)


def causal_mask(*, past: int, q_len: int, padding_mask: torch.Tensor | None = None,
                device: torch.device | None = None) -> torch.Tensor:
    """Boolean attention mask, True = attend, for q_len queries that follow `past` cached positions.

    Query i (absolute position past + i) sees keys at positions <= its own that padding_mask
    (B, past + q_len), 1 = real, 0 = pad, does not hide. Returns (1, 1, T, S) without padding_mask,
    else (B, 1, T, S), with S = past + q_len.
    """
    q_pos = torch.arange(past, past + q_len, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(past + q_len, device=device)[None, :]  # (1, S)
    mask = (k_pos <= q_pos)[None, None]  # (1, 1, T, S)
    if padding_mask is not None:
        mask = mask & padding_mask.bool()[:, None, None, :]  # (B, 1, T, S)
        # A pad query before any real token (left padding, an empty row) would see no key at all,
        # and some SDPA kernels softmax an empty row to NaN; letting it see itself changes no real token.
        mask = mask | (k_pos == q_pos)
    return mask


class Segments:
    """Where the conversations of packed rows lie, for attention that never crosses from one to another.

    Rather than a block-diagonal (T, T) mask over each whole row, whose masked entries cost as much as the
    others, attention gathers each conversation's queries, keys and values into a row of its own (right-padded
    to the longest conversation), runs causal SDPA there, and scatters the outputs back: the attention cost of
    padding each conversation alone, while every other layer runs on the packed rows. Same result as
    segment_mask (up to float rounding).
    """

    def __init__(self, segment_ids: torch.Tensor):
        """segment_ids: (B, T), 1, 2, ... for the conversations of a row (each contiguous), 0 on padding."""
        B, T = segment_ids.shape
        flat = segment_ids.reshape(-1)  # (B*T,)
        real = flat > 0
        self.positions = real.nonzero().squeeze(1)  # (N,) flat positions of real tokens
        row = torch.arange(B, device=flat.device).repeat_interleave(T)  # (B*T,)
        key = (row * (int(flat.max()) + 1) + flat)[real]  # (N,) one id per (row, segment), runs in order
        _, counts = torch.unique_consecutive(key, return_counts=True)  # (n_seg,)
        starts = torch.cumsum(counts, 0) - counts
        self.segment = torch.arange(len(counts), device=flat.device).repeat_interleave(counts)  # (N,)
        self.offset = torch.arange(len(key), device=flat.device) - starts.repeat_interleave(counts)  # (N,)
        self.shape = (B, T)
        self.n, self.width = len(counts), int(counts.max()) if len(counts) else 0
        index = torch.zeros(self.n, self.width, dtype=torch.long, device=flat.device)  # slots past a conversation's
        index[self.segment, self.offset] = self.positions  # end read position 0: causally never seen by real ones
        self.index = index

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        """(B, h, T, hs) -> (n_seg, h, width, hs)"""
        B, h, T, hs = x.shape
        flat = x.transpose(1, 2).reshape(B * T, h, hs)
        return flat[self.index].transpose(1, 2)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
        """q (B, nh, T, hs), k and v (B, nkv, T, hs) -> (B, nh, T, hs); zeros on padding."""
        B, nh, T, hs = q.shape
        dtype = q.dtype
        q, k, v = self.gather(q), self.gather(k), self.gather(v)  # (n_seg, h, width, hs)
        if q.device.type == "cpu" and dtype == torch.bfloat16:  # see Attention.forward
            q, k, v = q.float(), k.float(), v.float()
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.width > 1, dropout_p=dropout,
                                           enable_gqa=k.shape[1] != nh).to(dtype)  # (n_seg, nh, width, hs)
        out = y.new_zeros(B * T, nh, hs)
        out[self.positions] = y.transpose(1, 2)[self.segment, self.offset]  # (N, nh, hs)
        return out.reshape(B, T, nh, hs).transpose(1, 2)


def segment_mask(segment_ids: torch.Tensor) -> torch.Tensor:
    """Block-diagonal causal mask for packed rows, True = attend: (B, T) segment ids -> (B, 1, T, T).

    Query i sees key j <= i of the same segment only, so the conversations packed into a row never see
    each other. Padding (segment 0) sees earlier padding: every row keeps a key, and no real token sees it.
    """
    T = segment_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=segment_ids.device).tril()  # (T, T)
    same = segment_ids[:, :, None] == segment_ids[:, None, :]  # (B, T, T)
    return (same & causal)[:, None]
