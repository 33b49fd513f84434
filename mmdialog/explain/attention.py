"""Where the answer's attention goes: earlier rounds, the image's tokens, the current question.

One teacher-forced forward pass over a dialogue's gold conversation, with the decoder's attention layers
recording their probabilities (the `record` hook of mmdialog.modules.attention.Attention: off unless set,
and it never changes the output). For each scored round r, the queries are the positions that predict its
reply (its <|assistant|> token up to the last reply token, which predicts <|end|>); their attention,
averaged over heads and queries, is summed over the keys of each segment:

    image          the media tokens (the image's patches in their placeholder slots)
    round k < r    every token of round k's user and assistant turns (its media excluded)
    question       round r's user turn (its media excluded): column k = r of the matrix
    answer         round r's own assistant turn so far (its header and earlier reply tokens)
    other          the first token (the "attention sink": heads with nothing to attend to rest there, so it
                   is kept apart from round 0) and tokens outside any turn (none with the default template)

so each row sums to 1.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch

from mmdialog.modules.attention import Attention


@contextmanager
def recording(module: torch.nn.Module):
    """Within the block, every Attention under `module` records its probabilities; yields {name: list}."""
    layers = {name: m for name, m in module.named_modules() if isinstance(m, Attention)}
    maps: dict[str, list] = {name: [] for name in layers}
    for name, m in layers.items():
        m.record = maps[name]
    try:
        yield maps
    finally:
        for m in layers.values():
            m.record = None


def turn_of_positions(ids: list[int], role_ids: dict[str, int], end_id: int) -> list[int]:
    """For each position, the index of the turn it belongs to (role token to <|end|> inclusive), -1 outside."""
    out, turn, inside = [], -1, False
    roles = set(role_ids.values())
    for t in ids:
        if t in roles:
            turn, inside = turn + 1, True
        out.append(turn if inside else -1)
        if t == end_id:
            inside = False
    return out


@dataclass
class RoundAttention:
    """Attention of one answer; shares sum to 1 over image + rounds + answer + other."""

    round: int
    by_layer: np.ndarray  # (L, R + 3): columns image, round 0 .. round R (round r: the question), answer, other
    image_patches: np.ndarray | None  # (L, N_img) attention to each image token (None without an image)


def answer_attention(maps: list[torch.Tensor], ids: list[int], *, placeholder_id: int, role_ids: dict[str, int],
                     end_id: int, scored: list[tuple[int, int]], n_rounds: int) -> list[RoundAttention]:
    """maps: per decoder layer (1, nh, T, T); scored: (assistant turn index, round) per scored reply."""
    turns = turn_of_positions(ids, role_ids, end_id)
    T = len(ids)
    ids_t = torch.tensor(ids)
    media = ids_t == placeholder_id  # (T,)
    sink = torch.arange(T) == 0  # the first token: where attention rests when it has nowhere to go
    turn_t = torch.tensor(turns)  # (T,)
    assistant = role_ids["assistant"]
    header = [i for i, t in enumerate(ids) if t == assistant]  # the k-th assistant turn starts here
    probs = torch.stack([m[0].float().mean(0) for m in maps])  # (L, T, T) averaged over heads
    out = []
    for turn_idx, r in scored:
        start = header[turn_idx]  # <|assistant|>: predicts the first reply token
        end = next(i for i in range(start, T) if ids[i] == end_id)  # <|end|>: the reply's last query is end - 1
        a = probs[:, start:end].mean(1)  # (L, T) mean over the reply's queries
        cols = torch.zeros(a.shape[0], n_rounds + 3)
        cols[:, 0] = a[:, media].sum(-1)
        for k in range(r + 1):
            # user turn of round k is turn 2k, its assistant turn 2k + 1; for k = r only the question
            in_round = ((turn_t == 2 * k) | ((turn_t == 2 * k + 1) & (k < r))) & ~media & ~sink
            cols[:, 1 + k] = a[:, in_round].sum(-1)
        cols[:, n_rounds + 1] = a[:, (turn_t == 2 * r + 1) & ~media].sum(-1)
        cols[:, n_rounds + 2] = (1 - cols[:, : n_rounds + 2].sum(-1)).clamp(min=0)
        patches = a[:, media].numpy() if bool(media.any()) else None
        out.append(RoundAttention(r, cols.numpy(), patches))
    return out
