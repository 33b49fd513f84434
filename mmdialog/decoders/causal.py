"""A Llama-style causal decoder: RMSNorm, RoPE, SwiGLU, grouped-query SDPA attention."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from mmdialog.decoders.base import Decoder
from mmdialog.errors import MMDialogError
from mmdialog.modules import (Attention, KVCache, RMSNorm, RotaryEmbedding, Segments, SwiGLU, TransformerBlock,
                              causal_mask)
from mmdialog.registry import DECODERS


@DECODERS.register("causal")
class CausalDecoder(Decoder):
    """Token embedding -> depth pre-norm blocks -> final RMSNorm; `logits` applies the lm head separately.

    kv_heads=0 means one kv head per query head; mlp_hidden=0 means 8/3 * dim rounded up to a multiple of 32.
    """

    def __init__(self, *, vocab_size: int, dim: int, depth: int, heads: int, kv_heads: int, mlp_hidden: int,
                 max_seq_len: int, rope_theta: float, norm_eps: float, dropout: float, tie_embeddings: bool,
                 init: str = "fan_in", qk_norm: bool = False):
        super().__init__()
        mlp_hidden = mlp_hidden or 32 * math.ceil(8 * dim / 3 / 32)
        self.max_seq_len = max_seq_len
        self.dim, self.num_layers = dim, depth
        self.tok_embeddings = nn.Embedding(vocab_size, dim)
        rope = RotaryEmbedding(head_dim=dim // heads, theta=rope_theta)  # stateless: one instance serves every layer
        self.blocks = nn.ModuleList(
            TransformerBlock(
                attn=Attention(dim=dim, heads=heads, kv_heads=kv_heads or heads, causal=True, rope=rope, dropout=dropout,
                           qk_norm=qk_norm),
                mlp=SwiGLU(dim=dim, hidden_dim=mlp_hidden),
                attn_norm=RMSNorm(dim, eps=norm_eps),
                mlp_norm=RMSNorm(dim, eps=norm_eps),
                dropout=dropout,
            )
            for _ in range(depth)
        )
        self.dropout = nn.Dropout(dropout)
        self.norm = RMSNorm(dim, eps=norm_eps)
        self.lm_head = nn.Linear(dim, vocab_size, bias=False)
        if tie_embeddings:
            self.lm_head.weight = self.tok_embeddings.weight

        self.init_weights(init)

    def init_weights(self, scheme: str = "fan_in") -> None:
        """fan_in (default): every Linear N(0, 1/sqrt(in_features)) and the embedding N(0, 1/sqrt(dim)), so each
        layer starts with unit gain whatever the width; gpt2: N(0, 0.02) everywhere. In both, the two output
        projections of each block are scaled by 1/sqrt(2 * depth) (each block adds two branches to the residual
        stream). At dim 128 GPT-2's 0.02 is a quarter of the fan-in std: attention starts nearly uniform and the
        narrow model learns the lookups of its context several times slower (benchmarks/learning_curve.py)."""
        if scheme not in ("fan_in", "gpt2"):
            raise MMDialogError(f"model.decoder.init must be fan_in or gpt2, got {scheme!r}")
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02 if scheme == "gpt2" else module.in_features ** -0.5)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, std=0.02 if scheme == "gpt2" else module.embedding_dim ** -0.5)
        depth = len(self.blocks)
        for block in self.blocks:
            for proj in (block.attn.out_proj, block.mlp.out_proj):
                std = 0.02 if scheme == "gpt2" else proj.in_features ** -0.5
                nn.init.normal_(proj.weight, std=std / math.sqrt(2 * depth))

    @staticmethod
    def sizes(cfg) -> tuple[int, int]:
        """(width, layers) a DecoderConfig gives, without building the decoder."""
        return cfg.dim, cfg.depth

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, D)
        return self.tok_embeddings(input_ids)

    supports_packing = True  # forward takes position_ids and segment_ids (packed rows)
    supports_cached_positions = True  # forward takes position_ids (B, T) with a cache (eval/batched_chat.py)

    def blocks_in_order(self) -> nn.ModuleList:
        return self.blocks

    def forward(self, inputs_embeds: torch.Tensor, *, attention_mask: torch.Tensor | None = None,
                cache: KVCache | None = None, layer_hook=None, position_ids: torch.Tensor | None = None,
                segment_ids: torch.Tensor | None = None) -> torch.Tensor:
        """inputs_embeds: (B, T, D); attention_mask: (B, T_past + T), 1 = real, 0 = pad. Returns hidden (B, T, D).

        Positions continue from the cache's length; the cache is appended to in place.
        layer_hook(layer, x) -> x runs before each block (a fusion's cross-attention layers live there).
        Packed rows (training, no cache): segment_ids (B, T) number the conversations of a row 1, 2, ...
        (0 = padding) and each token attends only to earlier tokens of its own; position_ids (B, T) restart
        at 0 with each conversation. position_ids (B, T) with a cache and no segment_ids: each row's own
        positions (rows whose real tokens sit in different columns, the gaps masked by attention_mask).
        """
        if segment_ids is not None or (position_ids is not None and cache is None):
            return self._forward_packed(inputs_embeds, position_ids, segment_ids, cache, layer_hook)
        B, T, _ = inputs_embeds.shape
        past = cache.seq_len if cache is not None else 0
        if past + T > self.max_seq_len:
            raise MMDialogError(f"{past} cached + {T} new positions exceed the decoder's max_seq_len {self.max_seq_len}")
        if attention_mask is not None and attention_mask.shape != (B, past + T):
            raise MMDialogError(
                f"attention_mask has shape {tuple(attention_mask.shape)}, expected ({B}, {past + T}) "
                f"for {past} cached and {T} new positions"
            )
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # nothing is padded: keep the fast paths below open
        elif attention_mask is not None and past == 0 and bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all()):
            # Right padding only (the training collator's): under the causal triangle no real token can see
            # a pad, which all come after it, so the mask changes nothing that is used; drop it for speed.
            attention_mask = None
        positions = torch.arange(past, past + T, device=inputs_embeds.device) if position_ids is None \
            else position_ids  # (T,) or (B, T)

        # No mask means SDPA's built-in causal triangle (no cache) or no masking at all (one new token
        # sees every cached one). Padding, or several new tokens after a cache, need the mask spelt out.
        mask = None
        if attention_mask is not None or (past > 0 and T > 1):
            mask = causal_mask(past=past, q_len=T, padding_mask=attention_mask, device=inputs_embeds.device)

        x = self.dropout(inputs_embeds)
        for layer, block in enumerate(self.blocks):
            if layer_hook is not None:
                x = layer_hook(layer, x)
            x = block(x, positions=positions, mask=mask, cache=cache, layer=layer)  # (B, T, D)
        return self.norm(x)

    def _forward_packed(self, inputs_embeds, position_ids, segment_ids, cache, layer_hook) -> torch.Tensor:
        B, T, _ = inputs_embeds.shape
        if cache is not None:
            raise MMDialogError("packed rows (position_ids/segment_ids) are for training; they take no KV cache")
        if T > self.max_seq_len:
            raise MMDialogError(f"a packed row of {T} positions exceeds the decoder's max_seq_len {self.max_seq_len}")
        if position_ids is None:
            position_ids = torch.arange(T, device=inputs_embeds.device)  # (T,)
        mask = Segments(segment_ids) if segment_ids is not None else None  # attention per conversation
        x = self.dropout(inputs_embeds)
        for layer, block in enumerate(self.blocks):
            if layer_hook is not None:
                x = layer_hook(layer, x)
            x = block(x, positions=position_ids, mask=mask, layer=layer)  # (B, T, D)
        return self.norm(x)

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:  # (..., D) -> (..., V)
        return self.lm_head(hidden)
