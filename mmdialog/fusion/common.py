"""The fusion protocol (the Fusion base class) and what the fusions share: finding media items in input_ids,
packing them per row, masks by position.

Every fusion subclasses Fusion and overrides what it changes; the model reads these attributes and calls
these methods as they are, with no probing:

    forward(token_embeds (B, T, D), input_ids (B, T), media {m: features}, placeholder_ids {m: id}, **state) -> (B, T, D)
        required; features are (N_m, T_m, d_m), or (N_m, L, T_m, d_m) when the fusion asks for `levels`.
    media_slots(modality, encoder_tokens) -> int
        placeholder tokens one item occupies in input_ids (default: the encoder's token count).
    levels: tuple[int, ...] | None
        the encoder depths the fusion wants (encoders then run forward_levels); None (default): the outputs.
    uses_cache: bool
        forward also receives cache= (KVCache or None) and past= (positions already cached); default False.
    decoder_hook(input_ids, media, placeholder_ids, *, cache, past) -> callable(layer, hidden) -> hidden, or None
        run before each decoder layer (cross-attention layers live there); default None: no hook.
    mixes_positions: bool
        True when a position's output depends on other positions of its row (a decoder hook, co-attention):
        packed rows and the batched chat decoder then do not apply. Default False: placeholder slots only.
    explain_values() -> {name: (B, ...) tensor} or None
        gates or mixing weights of the last forward pass, for `mmdialog explain`; default None: nothing to show.

Anything a fusion keeps across cached forward passes goes into `cache.media[name]` (a MediaMemory), with
the absolute positions it belongs to, so that cropping the cache crops it too. A text position may use
only media whose placeholder comes at or before it: that is what makes cached decoding equal re-encoding.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn as nn

from mmdialog.errors import MMDialogError
from mmdialog.modules import MediaMemory

LayerHook = Callable[[int, torch.Tensor], torch.Tensor]  # (decoder layer index, hidden (B, T, D)) -> (B, T, D)


class Fusion(nn.Module):
    """Base class of every fusion: the protocol above, with the defaults of a fusion that only fills
    placeholder slots (concat). Subclasses define __init__(*, in_dims, out_dim, ...) and forward."""

    levels: tuple[int, ...] | None = None
    uses_cache: bool = False
    mixes_positions: bool = False

    def forward(self, token_embeds: torch.Tensor, input_ids: torch.Tensor, media: dict[str, torch.Tensor],
                placeholder_ids: dict[str, int], **state) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define forward")

    def media_slots(self, modality: str, encoder_tokens: int) -> int:
        return encoder_tokens

    def decoder_hook(self, input_ids: torch.Tensor, media: dict[str, torch.Tensor], placeholder_ids: dict[str, int],
                     *, cache=None, past: int = 0) -> LayerHook | None:
        return None

    def explain_values(self) -> dict[str, torch.Tensor] | None:
        return None


def locate_items(input_ids: torch.Tensor, feats: torch.Tensor | None, modality: str, placeholder_id: int,
                 slots: int, past: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each of the N items of one modality sits: rows (N,) and absolute start positions (N,).

    Item k occupies placeholder occurrences k*slots .. k*slots + slots - 1 in row-major order (the
    processor expands each placeholder to `slots` consecutive tokens, the collator keeps items in order).
    """
    where = (input_ids == placeholder_id).nonzero()  # (n_slots, 2) row-major: (row, position)
    n_items = 0 if feats is None else feats.shape[0]
    if where.shape[0] != n_items * slots:
        given = f"no {modality} inputs need 0" if feats is None else \
            f"{n_items} {modality} inputs need {n_items}x{slots}={n_items * slots}"
        raise MMDialogError(f"input_ids hold {where.shape[0]} <{modality}> placeholder tokens but {given}")
    first = where[::slots] if slots else where[:0]  # (N, 2)
    return first[:, 0], first[:, 1] + past


def check_media(media: dict, placeholder_ids: dict[str, int]) -> None:
    unknown = sorted(set(media) - set(placeholder_ids))
    if unknown:
        raise MMDialogError(f"media given for {unknown} but placeholder tokens exist only for {sorted(placeholder_ids)}")


def pack(rows: torch.Tensor, starts: torch.Tensor, tokens: list[torch.Tensor], batch: int,
         tensors: dict[str, list[torch.Tensor]] | None = None) -> tuple[MediaMemory, torch.Tensor]:
    """Items (row, start, tokens (T_i, C)) -> a MediaMemory whose rows hold their own items' tokens in order.

    tensors: more per-token tensors to pack alike (name -> one (T_i, C') per item); "x" holds `tokens`.
    Returns the memory and item ids (B, M), the index of the item each entry came from (-1 on padding).
    """
    tensors = {"x": tokens, **(tensors or {})}
    order = sorted(range(len(tokens)), key=lambda i: (int(rows[i]), int(starts[i])))
    per_row: list[list[int]] = [[] for _ in range(batch)]
    for i in order:
        per_row[int(rows[i])].append(i)
    width = max([sum(tokens[i].shape[0] for i in r) for r in per_row] + [0])
    ref = tokens[0] if tokens else None
    device = ref.device if ref is not None else rows.device
    positions = torch.zeros(batch, width, dtype=torch.long, device=device)
    valid = torch.zeros(batch, width, dtype=torch.bool, device=device)
    item = torch.full((batch, width), -1, dtype=torch.long, device=device)
    out = {}
    for name, parts in tensors.items():
        c = parts[0].shape[-1] if parts else 1
        dtype = parts[0].dtype if parts else torch.float32
        buf = torch.zeros(batch, width, c, dtype=dtype, device=device)
        rows_out = []
        for b, items in enumerate(per_row):
            chunks = [parts[i] for i in items]
            n = sum(ch.shape[0] for ch in chunks)
            row = torch.cat(chunks + [buf.new_zeros(width - n, c)]) if chunks else buf[b]
            rows_out.append(row)
        out[name] = torch.stack(rows_out) if rows_out else buf
    for b, items in enumerate(per_row):
        j = 0
        for i in items:
            n = tokens[i].shape[0]
            positions[b, j:j + n] = starts[i]
            valid[b, j:j + n] = True
            item[b, j:j + n] = i
            j += n
    return MediaMemory(positions, valid, out), item


def visible(query_pos: torch.Tensor, memory: MediaMemory, strict: bool = False) -> torch.Tensor:
    """(B, T) or (T,) query positions -> (B, T, M) mask: valid entries at positions <= (strict: <) the query's."""
    if query_pos.dim() == 1:
        query_pos = query_pos[None]
    mp = memory.positions[:, None, :]  # (B, 1, M)
    qp = query_pos[:, :, None]  # (B or 1, T, 1)
    seen = mp < qp if strict else mp <= qp
    return seen & memory.valid[:, None, :]


def remember(cache, name: str, new: MediaMemory) -> MediaMemory:
    """Append new entries to the cache's memory `name` (when there is a cache) and return all entries."""
    if cache is None:
        return new
    old = cache.media.get(name)
    full = new if old is None else old.append(new)
    cache.media[name] = full
    return full


def fill_slots(token_embeds: torch.Tensor, input_ids: torch.Tensor, placeholder_id: int,
               tokens: torch.Tensor) -> torch.Tensor:
    """Write tokens (N, S, D) into the N*S placeholder slots, row-major (counts checked by locate_items)."""
    slots = input_ids == placeholder_id  # (B, T)
    flat = tokens.reshape(-1, tokens.shape[-1]).to(token_embeds.dtype)  # (N*S, D)
    # masked_scatter passes gradients to both inputs; the cast matters under autocast (bf16 tokens, fp32 embeddings)
    return token_embeds.masked_scatter(slots.unsqueeze(-1), flat)


def slot_fusion_forward(fusion, token_embeds: torch.Tensor, input_ids: torch.Tensor, media: dict,
                        placeholder_ids: dict[str, int], make_tokens) -> torch.Tensor:
    """The forward of every fusion that fills placeholder slots item by item: make_tokens(modality, feats)
    -> (N, S, D) with S = fusion.media_slots(modality, ...) tokens per item."""
    check_media(media, placeholder_ids)
    for modality, placeholder_id in placeholder_ids.items():
        feats = media.get(modality)
        if feats is None:
            locate_items(input_ids, None, modality, placeholder_id, 1)  # raises if placeholders wait for media
            continue
        tokens = make_tokens(modality, feats)  # (N, S, D)
        locate_items(input_ids, feats, modality, placeholder_id, tokens.shape[1])
        if tokens.shape[0]:
            token_embeds = fill_slots(token_embeds, input_ids, placeholder_id, tokens)
    return token_embeds


def pick_levels(feats: torch.Tensor, modality: str, n_levels: int) -> torch.Tensor:
    """Check that features carry the level axis: (N, L, T, d)."""
    if feats.dim() != 4 or feats.shape[1] != n_levels:
        raise MMDialogError(f"{modality} features must be (N, {n_levels} levels, T, d) for this fusion, "
                            f"got shape {tuple(feats.shape)}")
    return feats
