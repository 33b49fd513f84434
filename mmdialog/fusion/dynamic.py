"""Dynamic fusion: an input-conditioned gate weighs encoder levels and the modality, item by item.

For each media item (N, L, T, d) from forward_levels, a small gate network reads the item's pooled
features at every level and gives
    level weights  w (L,), a softmax: which depth of the encoder this item should be seen at;
    modality weight  a in (0, 2), 2 * sigmoid: how strongly this item's tokens enter the decoder;
and the tokens are  a * sum_l w_l * proj_l(feats_l)  (N, T, D) in the item's placeholder slots.
The gate's last layer starts at zero: every level weighs 1/L and every modality 1 until training moves them.

The gate reads only the item itself, not the surrounding text: a weight that depended on text after the
item would change as the dialogue goes on, and cached decoding would no longer equal re-encoding.
gate_weights() returns the weights of the last forward pass, per item and per example, for inspection;
explain_values() the per-example ones, for `mmdialog explain`.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdialog.errors import MMDialogError
from mmdialog.fusion.common import Fusion, check_media, locate_items, pick_levels, slot_fusion_forward
from mmdialog.registry import FUSIONS


@FUSIONS.register("dynamic")
class DynamicFusion(Fusion):
    def __init__(self, *, in_dims: dict[str, int], out_dim: int, levels: tuple[int, ...]):
        super().__init__()
        if not levels:
            raise MMDialogError("model.fusion.levels must name at least one encoder level")
        self.levels = tuple(levels)
        self.modalities = list(in_dims)
        L = len(self.levels)
        self.level_proj = nn.ModuleDict({
            m: nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))
                             for _ in range(L))
            for m, d in in_dims.items()
        })
        self.gate = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(L * d, out_dim), nn.GELU(), nn.Linear(out_dim, L + 1)) for m, d in in_dims.items()}
        )
        for g in self.gate.values():
            nn.init.zeros_(g[-1].weight)
            nn.init.zeros_(g[-1].bias)
        self._last: dict[str, dict[str, torch.Tensor]] = {}
        self._batch = 0  # examples in the last forward pass

    def weigh(self, modality: str, feats: torch.Tensor) -> torch.Tensor:
        """(N, L, T, d) -> (N, T, D), recording the gate's weights."""
        feats = pick_levels(feats, modality, len(self.levels))
        N, L = feats.shape[:2]
        pooled = F.layer_norm(feats.mean(2), feats.shape[-1:])  # (N, L, d): each level's summary of the item
        logits = self.gate[modality](pooled.reshape(N, -1)).float()  # (N, L + 1)
        level_w = logits[:, :L].softmax(-1)  # (N, L)
        modality_w = 2 * torch.sigmoid(logits[:, L])  # (N,)
        projected = torch.stack([proj(feats[:, i]) for i, proj in enumerate(self.level_proj[modality])], 1)  # (N, L, T, D)
        fused = (level_w[:, :, None, None].to(projected.dtype) * projected).sum(1)  # (N, T, D)
        self._last[modality] = {"levels": level_w.detach(), "modality": modality_w.detach()}
        return fused * modality_w[:, None, None].to(fused.dtype)

    def forward(self, token_embeds: torch.Tensor, input_ids: torch.Tensor, media: dict[str, torch.Tensor],
                placeholder_ids: dict[str, int]) -> torch.Tensor:
        self._last = {}
        out = slot_fusion_forward(self, token_embeds, input_ids, media, placeholder_ids, self.weigh)
        check_media(media, placeholder_ids)
        for modality, w in self._last.items():
            feats = media[modality]
            rows, _ = locate_items(input_ids, feats, modality, placeholder_ids[modality], feats.shape[2])
            w["rows"] = rows
        self._batch = input_ids.shape[0]
        return out

    def gate_weights(self) -> dict:
        """The gate's weights in the last forward pass.

        items:    {modality: {"levels": (N_m, L), "modality": (N_m,), "rows": (N_m,) example of each item}}
        examples: {"modality": (B, n_modalities) mean modality weight of each example's items (nan: none),
                   "levels": (B, n_modalities, L) mean level weights}, modalities in `self.modalities` order
        """
        B = self._batch
        L = len(self.levels)
        mod = torch.full((B, len(self.modalities)), float("nan"))
        lev = torch.full((B, len(self.modalities), L), float("nan"))
        for j, m in enumerate(self.modalities):
            w = self._last.get(m)
            if w is None:
                continue
            for b in range(B):
                sel = w["rows"] == b
                if sel.any():
                    mod[b, j] = w["modality"][sel].mean()
                    lev[b, j] = w["levels"][sel].mean(0)
        return {"items": self._last, "examples": {"modality": mod, "levels": lev}, "modalities": list(self.modalities)}

    def explain_values(self) -> dict[str, torch.Tensor] | None:
        """Per example of the last forward pass: the mean modality weight (B, n_modalities) and level weights
        (B, n_modalities, L) of its items (gate_weights' examples); None before any forward pass."""
        if not self._batch:
            return None
        ex = self.gate_weights()["examples"]
        return {"modality weight": ex["modality"], "level weights": ex["levels"]}
