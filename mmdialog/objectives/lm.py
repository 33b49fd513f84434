"""Next-token prediction."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdialog.objectives.base import Objective

# the label of positions that carry no target (prompts, user turns, media, padding): the processor writes it,
# the loss skips it
IGNORE_INDEX = -100


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


def target_weights(labels: torch.Tensor, loss_weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T) float weight of the target at each position: 0 where there is none, else 1, or the weight of
    the target token's message when the batch carries loss_weights (B, T) (collator, train.loss_turns=weighted)."""
    supervised = (shift_labels(labels) != IGNORE_INDEX).float()  # (B, T)
    if loss_weights is None:
        return supervised
    return supervised * F.pad(loss_weights[:, 1:], (0, 1))


class NextTokenObjective(Objective):
    """The training objective around a MultimodalLM: batch -> (sum of weighted token losses, sum of weights).

    Sums rather than a mean, so the trainer can divide by the weight of the whole global batch (all
    micro-batches on all processes): accumulation and data parallelism then give the gradient of one big
    batch. Wrapping the model in a module gives DDP a single forward to hook.

    The batch is the model's forward arguments (labels, and loss_weights (B, T) when the collator gives them):
    the loss is the model's own (MultimodalLM.forward), computed at the supervised positions only.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(**batch)
        return out.loss_sum, out.target_weight

    def batch_weight(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weight of the batch's supervised targets (their count, or their message weights)."""
        return target_weights(batch["labels"], batch.get("loss_weights")).sum()
