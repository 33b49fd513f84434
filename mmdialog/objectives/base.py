"""The objective protocol (the Objective base class): what train() takes as its objective and reads of it.

    forward(batch) -> (sum of the micro-batch's losses, its weight)
        required; sums, so that the trainer can divide by the weight of the whole global batch
    batch_weight(batch) -> () tensor
        required: the micro-batch's weight, known before the forward pass (the trainer sums it over the
        global batch first)
    last_terms: Mapping[str, float]
        figures of the last forward pass added to each train_log.jsonl record; default: none. A subclass
        assigns a new dict after each forward pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import torch
import torch.nn as nn


class Objective(nn.Module):
    """Base class of the training objectives (NextTokenObjective, pretraining's PretrainObjective)."""

    last_terms: Mapping[str, float] = MappingProxyType({})

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError(f"{type(self).__name__} must define forward")

    def batch_weight(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define batch_weight")
