"""Media-text contrastive learning (InfoNCE, CLIP-style) with a learnable temperature.

One code path for image-text, video-text and audio-text: the loss takes two batches of embeddings and
does not know where they came from.

    media (N, d_m) --proj--> (N, E), text (N, d_t) --proj--> (N, E), both L2-normalised
    logits = scale * media @ text.T   (N, N); pair i is row i / column i
    loss = (CE(logits, diag) + CE(logits.T, diag)) / 2

Under torch.distributed the embeddings of every process are gathered first, so each process scores its
pairs against the whole global batch (more negatives). The gathered copies of the other processes'
embeddings carry no gradient; each process's own slice is its local tensor, so every process gets the
exact gradient of the global loss with respect to its own embeddings, and the sum over processes is the
gradient of the global loss (see `global_share` for how the trainer's averaging is undone).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as torch_dist
import torch.nn as nn
import torch.nn.functional as F

MIN_TEMPERATURE, MAX_TEMPERATURE = 0.01, 1.0


class LogitScale(nn.Module):
    """A learnable temperature, stored as log(1 / temperature) and clamped to [MIN, MAX] temperature when used
    (CLIP clamps the scale at 100 so that training stays stable)."""

    def __init__(self, temperature: float = 0.07):
        super().__init__()
        if not MIN_TEMPERATURE <= temperature <= MAX_TEMPERATURE:
            raise ValueError(f"temperature {temperature} is outside [{MIN_TEMPERATURE}, {MAX_TEMPERATURE}]")
        # shape (1,), not (): checkpoint digests view every tensor as bytes, which a 0-dim tensor cannot do
        self.log_scale = nn.Parameter(torch.tensor([math.log(1.0 / temperature)]))

    def forward(self) -> torch.Tensor:
        """() the scale, 1 / temperature."""
        return self.log_scale.clamp(math.log(1 / MAX_TEMPERATURE), math.log(1 / MIN_TEMPERATURE)).exp()[0]

    @property
    def temperature(self) -> float:
        return float(1.0 / self().detach())


def gather_rows(x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(n, ...) on each process -> ((N, ...) the rows of all processes in rank order, offset of ours).

    The other processes' rows are detached copies; our own rows are `x` itself, so gradients reach them.
    Processes may hold different numbers of rows. Without an initialised process group: (x, 0).
    """
    if not (torch_dist.is_available() and torch_dist.is_initialized()) or torch_dist.get_world_size() == 1:
        return x, 0
    world, rank = torch_dist.get_world_size(), torch_dist.get_rank()
    n = torch.tensor([x.shape[0]], device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    torch_dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    biggest = max(sizes)
    padded = torch.zeros((biggest, *x.shape[1:]), dtype=x.dtype, device=x.device)
    padded[: x.shape[0]] = x.detach()
    parts = [torch.empty_like(padded) for _ in range(world)]
    torch_dist.all_gather(parts, padded)
    rows = [p[:s] for p, s in zip(parts, sizes)]
    rows[rank] = x  # our own slice keeps its graph
    return torch.cat(rows), sum(sizes[:rank])


def info_nce(media: torch.Tensor, text: torch.Tensor, scale: torch.Tensor | float,
             same: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over N pairs: media (N, E) and text (N, E), L2-normalised; pair i = row i.

    scale: 1 / temperature. same (N, N) bool, optional: pairs (i, j) that also match (e.g. identical captions);
    they are left out of each other's negatives (a true match is no negative). Returns the mean of the
    media->text and text->media cross-entropies, in fp32.
    """
    if media.shape != text.shape:
        raise ValueError(f"media embeddings {tuple(media.shape)} and text embeddings {tuple(text.shape)} differ")
    logits = scale * media.float() @ text.float().T  # (N, N)
    if same is not None:
        off_diag = same & ~torch.eye(len(logits), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(off_diag, float("-inf"))
    target = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def global_share(loss: torch.Tensor, n_local: int, n_global: int) -> torch.Tensor:
    """A loss computed on the whole global batch (the same value on every process, each process's gradient
    reaching only its own rows), in the trainer's currency: its value is n_local * loss, so that the trainer's
    sum over processes divided by the global weight is `loss`; its gradient is n_global * d loss, so that after
    the trainer divides by the global weight and DDP averages over processes the gradients sum to d loss."""
    return n_local * loss.detach() + n_global * (loss - loss.detach())


class ContrastiveHeads(nn.Module):
    """Projections of pooled media and text features into one E-dim space, and the learnable temperature."""

    def __init__(self, media_dim: int, text_dim: int, embed_dim: int = 64, temperature: float = 0.07):
        super().__init__()
        self.media_proj = nn.Linear(media_dim, embed_dim, bias=False)
        self.text_proj = nn.Linear(text_dim, embed_dim, bias=False)
        self.scale = LogitScale(temperature)

    def embed_media(self, pooled: torch.Tensor) -> torch.Tensor:  # (N, d_m) -> (N, E), unit norm
        return F.normalize(self.media_proj(pooled).float(), dim=-1)

    def embed_text(self, pooled: torch.Tensor) -> torch.Tensor:  # (N, d_t) -> (N, E), unit norm
        return F.normalize(self.text_proj(pooled).float(), dim=-1)


def pool_media(features: torch.Tensor) -> torch.Tensor:
    """Encoder output (N, T, d) -> (N, d): the mean over its tokens (patches, frames, audio frames)."""
    return features.mean(1)
