"""The decoder protocol (the Decoder base class). Every decoder subclasses Decoder and overrides what it has; the
model, the trainer and eval read these attributes and call these methods as they are, with no probing:

    embed(input_ids (B, T)) -> (B, T, D)
    forward(inputs_embeds (B, T, D), *, attention_mask=, cache=, layer_hook=) -> hidden (B, T, D)
        required; with supports_packing or supports_cached_positions it also takes position_ids= (and segment_ids=)
    logits(hidden (..., D)) -> (..., V)
    dim, num_layers, max_seq_len: int
        set by the constructor
    sizes(cfg) -> (dim, num_layers) or None
        static: what a DecoderConfig gives, without building the decoder (the fusion is built before it);
        default None: the model builds the decoder first to ask it.
    supports_packing: bool
        forward takes position_ids and segment_ids (B, T): packed training rows (train.pack). Default False.
    supports_cached_positions: bool
        forward takes position_ids (B, T) with a cache: rows whose tokens sit in different columns
        (eval/batched_chat.py). Default False.
    blocks_in_order() -> the transformer layers, first to last
        what gradient checkpointing wraps and FSDP shards one unit each. Default: none.
    checkpoint_natively() -> bool
        turn on the decoder's own gradient checkpointing and return True (a Hugging Face model's); default False:
        train/strategies.py wraps each of blocks_in_order() instead.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn


class Decoder(nn.Module):
    """Base class of every decoder: the protocol above, with the defaults of a decoder that takes neither
    packed rows nor per-row positions. Subclasses define __init__(*, vocab_size, max_seq_len, ...), embed,
    forward and logits."""

    dim: int
    num_layers: int
    max_seq_len: int
    supports_packing: bool = False
    supports_cached_positions: bool = False

    @staticmethod
    def sizes(cfg) -> tuple[int, int] | None:
        return None

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define embed")

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} must define logits")

    def blocks_in_order(self) -> Sequence[nn.Module]:
        return ()

    def checkpoint_natively(self) -> bool:
        return False
