"""Hierarchical fusion: features from several encoder depths (low and high levels) fused per token.

The encoders run forward_levels and give (N, L, T_m, d_m): level 0 is the embedding (patches, a
spectrogram's first conv), the last level the encoder's output. Each level is normalised on its own,
the levels are concatenated per token and an MLP projects them to the decoder width:

    (N, L, T, d) --LayerNorm per level--> (N, T, L*d) --Linear-GELU-Linear--> (N, T, D) into the slots
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mmdialog.errors import MMDialogError
from mmdialog.fusion.common import Fusion, pick_levels, slot_fusion_forward
from mmdialog.registry import FUSIONS


@FUSIONS.register("hierarchical")
class HierarchicalFusion(Fusion):
    def __init__(self, *, in_dims: dict[str, int], out_dim: int, levels: tuple[int, ...]):
        super().__init__()
        if not levels:
            raise MMDialogError("model.fusion.levels must name at least one encoder level")
        self.levels = tuple(levels)
        L = len(self.levels)
        self.norms = nn.ModuleDict({m: nn.ModuleList(nn.LayerNorm(d) for _ in range(L)) for m, d in in_dims.items()})
        self.projectors = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(L * d, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)) for m, d in in_dims.items()}
        )

    def fuse(self, modality: str, feats: torch.Tensor) -> torch.Tensor:
        """(N, L, T, d) -> (N, T, D)."""
        feats = pick_levels(feats, modality, len(self.levels))
        per_level = [norm(feats[:, i]) for i, norm in enumerate(self.norms[modality])]  # L x (N, T, d)
        return self.projectors[modality](torch.cat(per_level, dim=-1))  # (N, T, L*d) -> (N, T, D)

    def forward(self, token_embeds: torch.Tensor, input_ids: torch.Tensor, media: dict[str, torch.Tensor],
                placeholder_ids: dict[str, int]) -> torch.Tensor:
        return slot_fusion_forward(self, token_embeds, input_ids, media, placeholder_ids, self.fuse)
