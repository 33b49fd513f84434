"""Media-text matching (ITM, as in ALBEF/BLIP): does this text describe this image? A 2-way head on a fused
representation of the pair, trained on the true pairs and on hard negatives mined from the contrastive
similarity matrix: for each image the most similar text that is not its own, for each text the most similar
image that is not its own. Easy negatives teach nothing once contrastive learning has separated them.

    sim (N, N) = media_emb @ text_emb.T  (no gradient)
    negatives: text_for_media (N,), media_for_text (N,)
    fused states of [media i, text i], [media i, text_for_media[i]], [media_for_text[j], text j]: (3N, D)
    loss = CE(head(states), [1] * N + [0] * 2N)
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


def mine_hard_negatives(sim: torch.Tensor, same: torch.Tensor | None = None, mode: str = "hardest",
                        generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """For each media item a negative text, for each text a negative media item, from sim (N, N) with
    sim[i, j] = similarity of media i and text j.

    same (N, N) bool, optional: pairs that match although i != j (e.g. identical captions); never negatives,
    unless every other item matches (then any other item is the negative). N must be at least 2.
    mode "hardest": the most similar non-matching one; "sample": drawn with probability softmax(sim) over the
    non-matching ones (ALBEF). Returns (text_for_media (N,), media_for_text (N,)) long indices.
    """
    n = sim.shape[0]
    if sim.shape != (n, n) or n < 2:
        raise ValueError(f"hard negatives need a square similarity matrix of at least 2 pairs, got {tuple(sim.shape)}")
    if mode not in ("hardest", "sample"):
        raise ValueError(f"hard negative mode must be hardest or sample, got {mode!r}")
    eye = torch.eye(n, dtype=torch.bool, device=sim.device)
    blocked = eye if same is None else eye | same.to(sim.device)

    def fallback(b: torch.Tensor) -> torch.Tensor:  # a row with no candidate left keeps only itself blocked
        return torch.where(b.all(1, keepdim=True), eye, b)

    s = sim.detach().float()
    text_scores = s.masked_fill(fallback(blocked), float("-inf"))  # (N media, N texts)
    media_scores = s.T.masked_fill(fallback(blocked.T), float("-inf"))  # (N texts, N media)
    if mode == "hardest":
        return text_scores.argmax(1), media_scores.argmax(1)
    return (torch.multinomial(F.softmax(text_scores, 1), 1, generator=generator)[:, 0],
            torch.multinomial(F.softmax(media_scores, 1), 1, generator=generator)[:, 0])


class MatchingHead(nn.Module):
    """(M, D) fused states -> (M, 2) logits: index 1 = the text matches the media."""

    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.proj(states)


def matching_loss(logits: torch.Tensor, n_pos: int) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (M, 2) with the first n_pos rows the true pairs and the rest negatives -> (mean CE, accuracy)."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:n_pos] = 1
    loss = F.cross_entropy(logits.float(), labels)
    return loss, (logits.argmax(-1) == labels).float().mean().detach()
