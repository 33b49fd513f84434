"""Examples -> Batch whose keys are exactly `MultimodalLM.forward` arguments."""

from __future__ import annotations

import torch

from mmdialog.data.processor import IGNORE, Example


class Collator:
    """Right-pads a list of Examples.

    Returns a dict:
      input_ids:      (B, T) long, padded with the tokenizer's pad id
      attention_mask: (B, T) long, 1 on real tokens, 0 on padding
      labels:         (B, T) long, -100 on padding and on everything but assistant replies
      images:         (N, 3, H, W) float, all images of the batch in order of appearance
                      (row-major over the batch), or absent when no example has one
    """

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        T = max(len(e.input_ids) for e in examples)
        B = len(examples)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        labels = torch.full((B, T), IGNORE, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        for b, e in enumerate(examples):
            n = len(e.input_ids)
            input_ids[b, :n] = e.input_ids
            labels[b, :n] = e.labels
            mask[b, :n] = 1
        batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
        images = [e.images for e in examples if e.images is not None]
        if images:
            batch["images"] = torch.cat(images)
        return batch
