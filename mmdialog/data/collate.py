"""Examples -> Batch whose keys are exactly `MultimodalLM.forward` arguments (plus loss_weights for the objective)."""

from __future__ import annotations

import torch

from mmdialog.data.processor import Example
from mmdialog.errors import MMDialogError
from mmdialog.modalities import BATCH_KEYS
from mmdialog.objectives.lm import IGNORE_INDEX

LOSS_TURNS = ("all", "last", "weighted", "per_turn")


def reply_spans(labels: torch.Tensor) -> list[tuple[int, int]]:
    """[start, end) of each run of supervised labels: one per assistant reply (the processor supervises a reply's
    tokens and its <|end|>; the <|assistant|> token before and the next user turn are not supervised)."""
    sup = (labels != IGNORE_INDEX).tolist()
    spans, start = [], None
    for i, s in enumerate(sup + [False]):
        if s and start is None:
            start = i
        elif not s and start is not None:
            spans.append((start, i))
            start = None
    return spans


def last_turn_only(labels: torch.Tensor) -> torch.Tensor:
    """Labels with every reply but the last one unsupervised."""
    spans = reply_spans(labels)
    out = torch.full_like(labels, IGNORE_INDEX)
    if spans:
        s, e = spans[-1]
        out[s:e] = labels[s:e]
    return out


def pack_rows(lengths: list[int], capacity: int) -> list[list[int]]:
    """Example indices grouped into as few rows of at most `capacity` tokens as the greedy finds, with the rows'
    lengths balanced (longest first, each into the least-filled row), so that the batch's longest row, which sets
    the padded width, is short. Each row lists its examples in index order; deterministic for given lengths."""
    for n in lengths:
        if n > capacity:
            raise MMDialogError(f"a conversation of {n} tokens does not fit a packed row of {capacity} "
                                f"(train.pack_length)")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    for n_rows in range(max(1, -(-sum(lengths) // capacity)), len(lengths) + 1):
        rows: list[list[int]] = [[] for _ in range(n_rows)]
        load = [0] * n_rows
        for i in order:
            fits = [r for r in range(n_rows) if load[r] + lengths[i] <= capacity]
            if not fits:
                break
            r = min(fits, key=lambda r: (load[r], r))
            rows[r].append(i)
            load[r] += lengths[i]
        else:
            return [sorted(r) for r in rows if r]
    return [[i] for i in range(len(lengths))]


def reader_tensors(turns: list[list[int]]) -> dict[str, torch.Tensor]:
    """The user-turn reader's ids of N turns -> {reader_ids, reader_mask} (N, L), right-padded with 0."""
    L = max((len(t) for t in turns), default=1)
    ids = torch.zeros((len(turns), L), dtype=torch.long)
    mask = torch.zeros((len(turns), L), dtype=torch.long)
    for i, t in enumerate(turns):
        ids[i, :len(t)] = torch.tensor(t, dtype=torch.long)
        mask[i, :len(t)] = 1
    return {"reader_ids": ids, "reader_mask": mask}


def reader_batch(rows: list[tuple[list[list[int]], list[int]] | None], width: int) -> dict[str, torch.Tensor]:
    """Reader inputs of B rows of `width` positions, row b given as (the reader ids of its user turns, the turn of
    each of its tokens, -1: none) or None (no user-turn token) -> reader_ids, reader_mask (N, L) of only the turns
    the tokens use, and reader_index (B, width) pointing at them (-1 past a row's tokens)."""
    turns: list[list[int]] = []
    index = torch.full((len(rows), width), -1, dtype=torch.long)
    for b, row in enumerate(rows):
        if row is None:
            continue
        row_turns, idx = row
        at = {}
        for r in idx:
            if r >= 0 and r not in at:
                at[r] = len(turns)
                turns.append(row_turns[r])
        index[b, :len(idx)] = torch.tensor([at.get(r, -1) for r in idx], dtype=torch.long)
    return {**reader_tensors(turns), "reader_index": index}


class Collator:
    """Right-pads a list of Examples, one per row, or packs them several to a row (pack=True).

    Returns a dict:
      input_ids:      (B, T) long, padded with the tokenizer's pad id
      attention_mask: (B, T) long, 1 on real tokens, 0 on padding
      labels:         (B, T) long, -100 on padding and on everything but assistant replies
                      (loss_turns="last": but the last reply of each conversation)
      images:         (N, 3, H, W) float, all images of the batch in order of appearance
                      (row-major over the batch), or absent when no example has one
      audios:         (N, S) float waveforms, likewise (absent without audio)
      videos:         (N, F, 3, H, W) float frames, likewise (absent without video)
      reader_ids:     (N, L) long, the user-turn reader's tokens of every user turn of the batch, in order of
                      appearance, padded with 0 (only when the processor has a reader: model.reader)
      reader_mask:    (N, L) long, 1 on real reader tokens
      reader_index:   (B, T) long, the row of reader_ids each token's user turn is, -1 elsewhere and on padding
      loss_weights:   (B, T) float, each token's message weight (loss_turns="weighted" only; 1 where the data
                      gives none), or 1 / the reply's length (loss_turns="per_turn": each reply weighs the same,
                      a one-word answer as much as a caption). Not a forward() argument: the objective pops it.
    and with pack=True, B rows of at most pack_length tokens, each holding whole conversations, plus:
      position_ids:   (B, T) long, restarting at 0 with each conversation (0 on padding)
      segment_ids:    (B, T) long, 1, 2, ... for the conversations of a row, 0 on padding; the decoder lets
                      a token attend only within its segment
    """

    def __init__(self, pad_id: int, *, pack: bool = False, pack_length: int = 0, loss_turns: str = "all"):
        if loss_turns not in LOSS_TURNS:
            raise MMDialogError(f"train.loss_turns must be one of {', '.join(LOSS_TURNS)}, got {loss_turns!r}")
        if pack and pack_length <= 0:
            raise MMDialogError(f"packing needs a positive row length, got pack_length={pack_length}")
        self.pad_id, self.pack, self.pack_length, self.loss_turns = pad_id, pack, pack_length, loss_turns

    def __call__(self, examples: list[Example]) -> dict[str, torch.Tensor]:
        if self.pack:
            rows = pack_rows([len(e.input_ids) for e in examples], self.pack_length)
        else:
            rows = [[i] for i in range(len(examples))]
        T = max(sum(len(examples[i].input_ids) for i in row) for row in rows)
        B = len(rows)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        labels = torch.full((B, T), IGNORE_INDEX, dtype=torch.long)
        mask = torch.zeros((B, T), dtype=torch.long)
        positions = torch.zeros((B, T), dtype=torch.long)
        segments = torch.zeros((B, T), dtype=torch.long)
        weighted = self.loss_turns in ("weighted", "per_turn")
        weights = torch.ones((B, T)) if weighted else None
        read = [getattr(e, "reader_ids", None) is not None for e in examples]
        if any(read) and not all(read):
            raise MMDialogError("some examples carry user-turn reader inputs and some do not: one processor "
                                "makes a batch")
        turns: list[list[int]] = []  # the reader rows of the batch, row-major
        reader_index = torch.full((B, T), -1, dtype=torch.long) if all(read) and examples else None
        for b, row in enumerate(rows):
            at = 0
            for seg, i in enumerate(row, start=1):
                e = examples[i]
                n = len(e.input_ids)
                input_ids[b, at:at + n] = e.input_ids
                labels[b, at:at + n] = last_turn_only(e.labels) if self.loss_turns == "last" else e.labels
                mask[b, at:at + n] = 1
                positions[b, at:at + n] = torch.arange(n)
                segments[b, at:at + n] = seg
                if self.loss_turns == "per_turn":  # every reply counts as one, however many tokens it has
                    for s, t in reply_spans(e.labels):
                        weights[b, at + s:at + t] = 1.0 / (t - s)
                elif weighted and getattr(e, "weights", None) is not None:
                    weights[b, at:at + n] = e.weights
                if reader_index is not None:
                    idx = e.reader_index
                    reader_index[b, at:at + n] = torch.where(idx >= 0, idx + len(turns), idx)
                    turns.extend(e.reader_ids)
                at += n
        batch = {"input_ids": input_ids, "attention_mask": mask, "labels": labels}
        if self.pack:
            batch["position_ids"], batch["segment_ids"] = positions, segments
        if weighted:
            batch["loss_weights"] = weights
        if reader_index is not None:
            batch.update(reader_tensors(turns), reader_index=reader_index)
        order = [i for row in rows for i in row]  # media in order of appearance, row-major
        for key in BATCH_KEYS:
            items = [getattr(examples[i], key) for i in order if getattr(examples[i], key) is not None]
            if items:
                batch[key] = torch.cat(items)
        return batch
