"""Early fusion: projected media tokens take the place of their placeholder tokens in the decoder's input."""

from __future__ import annotations

import torch
import torch.nn as nn

from mmdialog.errors import MMDialogError
from mmdialog.fusion.common import Fusion
from mmdialog.registry import FUSIONS


@FUSIONS.register("concat")
class ConcatFusion(Fusion):
    """One Linear-GELU-Linear projector per modality, from its encoder's width to the decoder's."""

    def __init__(self, *, in_dims: dict[str, int], out_dim: int):
        super().__init__()
        self.projectors = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(d, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)) for m, d in in_dims.items()}
        )

    def forward(self, token_embeds: torch.Tensor, input_ids: torch.Tensor, media: dict[str, torch.Tensor],
                placeholder_ids: dict[str, int]) -> torch.Tensor:
        """token_embeds: (B, T, D); input_ids: (B, T); media[m]: (N_m, T_m, d_m). Returns (B, T, D).

        The N_m * T_m media tokens fill the placeholder slots of modality m in row-major order over
        the batch: the processor expands each item's placeholder to T_m consecutive tokens, and the
        collator concatenates the items of the whole batch in order of appearance.
        """
        unknown = sorted(set(media) - set(placeholder_ids))
        if unknown:
            raise MMDialogError(f"media given for {unknown} but placeholder tokens exist only for {sorted(placeholder_ids)}")
        for modality, placeholder_id in placeholder_ids.items():
            slots = input_ids == placeholder_id  # (B, T)
            n_slots = int(slots.sum())
            feats = media.get(modality)
            n_feats = 0 if feats is None else feats.shape[0] * feats.shape[1]
            if n_slots != n_feats:
                given = f"no {modality} inputs give 0" if feats is None else \
                    f"{feats.shape[0]} {modality} inputs give {feats.shape[0]}x{feats.shape[1]}={n_feats}"
                raise MMDialogError(
                    f"input_ids hold {n_slots} <{modality}> placeholder tokens but {given} embeddings"
                )
            if n_slots == 0:
                continue
            projected = self.projectors[modality](feats).reshape(n_feats, -1)  # (N_m * T_m, D)
            # masked_scatter fills the masked slots in row-major order and passes gradients to both inputs;
            # the cast matters under autocast, where the projector yields bf16 but embeddings stay fp32.
            token_embeds = token_embeds.masked_scatter(slots.unsqueeze(-1), projected.to(token_embeds.dtype))
        return token_embeds
