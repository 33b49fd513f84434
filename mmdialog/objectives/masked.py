"""Masked language modelling conditioned on the media: some text tokens are replaced by a mask token and the
model, reading the media and the corrupted text, predicts the original tokens at those positions only.

In mmdialog the fusion encoder is the model itself (media encoder + fusion + decoder): it reads
[media, prompt, caption with masks] and the state at each masked position predicts the token that was there,
through the decoder's own vocabulary head. The decoder is causal, so a masked token is predicted from the
media and the text to its left (and the mask in its own slot); the media are the only source of what the
token was, which is what makes the objective teach reading them.

    ids (B, T), candidates (B, T) bool --mask_tokens--> masked ids (B, T), targets (B, T) (-100 unless masked)
    hidden (B, T, D) at masked positions --lm head--> (M, V) --CE--> loss
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmdialog.objectives.lm import IGNORE_INDEX


def mask_tokens(ids: torch.Tensor, candidates: torch.Tensor, mask_id: int, prob: float,
                generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace each candidate token with mask_id with probability `prob` (at least one per row that has a
    candidate, so that every row teaches something). Returns (masked ids, targets): the targets hold the
    original id at masked positions and IGNORE_INDEX everywhere else."""
    if not 0 < prob <= 1:
        raise ValueError(f"the mask probability must be in (0, 1], got {prob}")
    draw = torch.rand(ids.shape, generator=generator, device="cpu").to(ids.device)  # (B, T)
    chosen = candidates & (draw < prob)
    # rows where nothing was drawn: mask their candidate with the smallest draw
    empty = candidates.any(1) & ~chosen.any(1)
    if empty.any():
        first = draw.masked_fill(~candidates, 2.0).argmin(1)  # (B,)
        chosen[empty, first[empty]] = True
    masked = ids.masked_fill(chosen, mask_id)
    targets = ids.masked_fill(~chosen, IGNORE_INDEX)
    return masked, targets


def masked_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (M, V) at the masked positions, targets (M,) -> (mean CE in fp32, accuracy)."""
    if logits.shape[0] == 0:
        return logits.sum() * 0.0, torch.zeros(())
    loss = F.cross_entropy(logits.float(), targets)
    return loss, (logits.argmax(-1) == targets).float().mean().detach()
