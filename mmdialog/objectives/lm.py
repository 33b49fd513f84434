"""Next-token prediction."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label of positions that carry no target (prompts, user turns, media, padding)


def shift_labels(labels: torch.Tensor) -> torch.Tensor:
    """(B, T) -> (B, T): position t's target is labels[t + 1]; the last position has none."""
    return F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over supervised targets. logits: (N, V), any dtype; targets: (N,).

    Computed in fp32 (bf16 log-softmax over a large vocabulary is visibly off). With no supervised
    target the loss is 0, still attached to the graph, instead of the NaN a plain mean would give.
    """
    total = F.cross_entropy(logits.float(), targets, ignore_index=IGNORE_INDEX, reduction="sum")
    return total / (targets != IGNORE_INDEX).sum().clamp(min=1)
