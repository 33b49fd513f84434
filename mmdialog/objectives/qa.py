"""Multimodal question answering: (media, question) -> answer.

Two ways, usable together:
- generated answers: the next-token loss on the answer's tokens (objectives.lm), decoded greedily at
  evaluation, scored by exact match;
- a classification head over a closed answer set (VQA-style): the decoder's state at the position that would
  generate the answer's first token (the <|assistant|> token) -> logits over the answers seen in training.
  An answer outside the set has no class and is left out of that loss (counted as wrong at evaluation).
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdialog.answers import normalise

NO_CLASS = -1  # the class of an answer outside the closed set


class AnswerVocab:
    """The closed answer set: normalised answers in order of frequency (ties alphabetical), capped at max_size."""

    def __init__(self, answers: list[str]):
        self.answers = list(answers)
        self.index = {a: i for i, a in enumerate(self.answers)}

    @classmethod
    def build(cls, answers, max_size: int = 1000) -> "AnswerVocab":
        counts = Counter(normalise(a) for a in answers)
        return cls([a for a, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_size]])

    def __len__(self) -> int:
        return len(self.answers)

    def encode(self, answer: str) -> int:
        return self.index.get(normalise(answer), NO_CLASS)

    def decode(self, i: int) -> str:
        return self.answers[i]


class AnswerHead(nn.Module):
    """(M, D) states -> (M, n_answers) logits."""

    def __init__(self, dim: int, n_answers: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Linear(dim, n_answers))

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        return self.proj(states)


def answer_class_loss(logits: torch.Tensor, classes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (M, K), classes (M,) with NO_CLASS for answers outside the set -> (mean CE over the rows with a
    class, accuracy over all rows). With no row in the set the loss is 0, still attached to the graph."""
    known = classes != NO_CLASS
    acc = ((logits.argmax(-1) == classes) & known).float().mean().detach() if len(classes) else torch.zeros(())
    if not known.any():
        return logits.sum() * 0.0, acc
    return F.cross_entropy(logits[known].float(), classes[known]), acc
