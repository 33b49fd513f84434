"""Perceiver-resampler fusion: learned queries compress every media item to a fixed number of tokens.

    feats (N, T_m, d_m) --Linear--> (N, T_m, D)
    latents (Q, D) per modality, `layers` times: latents += attn(latents -> [media; latents]); latents += mlp
    --norm, Linear--> (N, Q, D) into the item's Q placeholder slots

Q = num_queries whatever the encoder gives (a 16x16-patch image or a 30 s clip alike), so a long dialogue
with many media items stays short. Items are resampled independently, so caching is as for concat.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mmdialog.errors import MMDialogError
from mmdialog.fusion.common import Fusion, slot_fusion_forward
from mmdialog.modules import CrossAttention, GeluMLP
from mmdialog.registry import FUSIONS


class PerceiverLayer(nn.Module):
    def __init__(self, *, dim: int, heads: int):
        super().__init__()
        self.media_norm = nn.LayerNorm(dim)
        self.latent_norm = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim=dim, heads=heads)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = GeluMLP(dim=dim, hidden_dim=4 * dim)

    def forward(self, latents: torch.Tensor, media: torch.Tensor) -> torch.Tensor:
        """latents (N, Q, D), media (N, T, D) -> (N, Q, D); the latents attend to the media and to each other."""
        h = self.latent_norm(latents)
        keys, values = self.attn.kv(torch.cat([self.media_norm(media), h], 1))  # (N, T+Q, D)
        latents = latents + self.attn(h, keys, values)
        return latents + self.mlp(self.mlp_norm(latents))


@FUSIONS.register("resampler")
class ResamplerFusion(Fusion):
    def __init__(self, *, in_dims: dict[str, int], out_dim: int, heads: int, layers: int, num_queries: int):
        super().__init__()
        if num_queries < 1:
            raise MMDialogError(f"model.fusion.num_queries must be at least 1, got {num_queries}")
        self.num_queries = num_queries
        self.inputs = nn.ModuleDict({m: nn.Linear(d, out_dim) for m, d in in_dims.items()})
        self.latents = nn.ParameterDict({m: nn.Parameter(torch.randn(num_queries, out_dim) * 0.02) for m in in_dims})
        self.layers = nn.ModuleList(PerceiverLayer(dim=out_dim, heads=heads) for _ in range(layers))
        self.norm = nn.LayerNorm(out_dim)
        self.out_proj = nn.Linear(out_dim, out_dim)

    def media_slots(self, modality: str, encoder_tokens: int) -> int:
        return self.num_queries

    def resample(self, modality: str, feats: torch.Tensor) -> torch.Tensor:
        """(N, T_m, d_m) -> (N, num_queries, D)."""
        x = self.inputs[modality](feats)  # (N, T_m, D)
        latents = self.latents[modality].expand(x.shape[0], -1, -1).to(x.dtype)  # (N, Q, D)
        for layer in self.layers:
            latents = layer(latents, x)
        return self.out_proj(self.norm(latents))

    def forward(self, token_embeds: torch.Tensor, input_ids: torch.Tensor, media: dict[str, torch.Tensor],
                placeholder_ids: dict[str, int]) -> torch.Tensor:
        return slot_fusion_forward(self, token_embeds, input_ids, media, placeholder_ids, self.resample)
