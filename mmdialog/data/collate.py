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
      audios:         (N, S) float waveforms, likewise (absent without audio)
      videos:         (N, F, 3, H, W) float frames, likewise (absent without video)
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
        for key in ("images", "audios", "videos"):
            items = [getattr(e, key) for e in examples if getattr(e, key) is not None]
            if items:
                batch[key] = torch.cat(items)
        return batch
