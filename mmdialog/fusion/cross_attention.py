"""Flamingo-style fusion: gated cross-attention layers inside the decoder, text attending to media.

Each media item keeps a single placeholder token in input_ids (its learned <|image|> embedding marks
where it came); its encoder tokens never enter the sequence. Before decoder layers 0, every, 2*every, ...
a gated block lets every text position attend to the tokens of the media items whose placeholder is at
or before it:

    x = x + tanh(attn_gate) * xattn(norm(x), media keys/values)      # (B, T, D)
    x = x + tanh(mlp_gate) * mlp(norm(x))

The gates start closed (gate_init = 0), so the untrained fusion leaves the decoder exactly as it was.
The media keys and values of every block are computed once per item and, with a KV cache, kept in
cache.media["cross_attention"]: a chat session computes them once per session, and later turns only
add queries.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mmdialog.errors import MMDialogError
from mmdialog.fusion.common import Fusion, LayerHook, check_media, locate_items, pack, remember, visible
from mmdialog.modules import CrossAttention, GeluMLP, MediaMemory
from mmdialog.registry import FUSIONS


class GatedCrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention and MLP, each behind a tanh gate."""

    def __init__(self, *, dim: int, heads: int, gate_init: float):
        super().__init__()
        self.attn_norm = nn.LayerNorm(dim)
        self.attn = CrossAttention(dim=dim, heads=heads)
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = GeluMLP(dim=dim, hidden_dim=4 * dim)
        self.attn_gate = nn.Parameter(torch.tensor(float(gate_init)))
        self.mlp_gate = nn.Parameter(torch.tensor(float(gate_init)))

    def forward(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D); keys, values: (B, M, D); mask: (B, T, M). Returns (B, T, D) in x's dtype."""
        y = x + torch.tanh(self.attn_gate) * self.attn(self.attn_norm(x), keys, values, mask)
        y = y + torch.tanh(self.mlp_gate) * self.mlp(self.mlp_norm(y))
        return y.to(x.dtype)


@FUSIONS.register("cross_attention")
class CrossAttentionFusion(Fusion):
    NAME = "cross_attention"
    mixes_positions = True  # text attends to the media of earlier positions, inside the decoder

    def __init__(self, *, in_dims: dict[str, int], out_dim: int, num_layers: int, heads: int, every: int,
                 gate_init: float):
        super().__init__()
        if every < 1:
            raise MMDialogError(f"model.fusion.every must be at least 1, got {every}")
        self.every = every
        self.projectors = nn.ModuleDict({m: nn.Linear(d, out_dim) for m, d in in_dims.items()})
        self.media_norm = nn.LayerNorm(out_dim)
        self.blocks = nn.ModuleList(GatedCrossAttentionBlock(dim=out_dim, heads=heads, gate_init=gate_init)
                                    for _ in range(0, num_layers, every))
        self._batch = 0  # examples in the last forward pass (explain_values)

    def media_slots(self, modality: str, encoder_tokens: int) -> int:
        return 1  # the placeholder stays a marker; the media enter through cross-attention

    def forward(self, token_embeds: torch.Tensor, input_ids: torch.Tensor, media: dict[str, torch.Tensor],
                placeholder_ids: dict[str, int]) -> torch.Tensor:
        check_media(media, placeholder_ids)
        for modality, placeholder_id in placeholder_ids.items():  # counts are checked here, used in the hook
            locate_items(input_ids, media.get(modality), modality, placeholder_id, 1)
        self._batch = input_ids.shape[0]
        return token_embeds

    def memory(self, input_ids: torch.Tensor, media: dict[str, torch.Tensor], placeholder_ids: dict[str, int],
               past: int = 0) -> MediaMemory:
        """Keys and values of every block for the media items of this pass: entries at their placeholders."""
        rows, starts, tokens = [], [], []
        for modality, feats in media.items():
            r, s = locate_items(input_ids, feats, modality, placeholder_ids[modality], 1, past)
            x = self.media_norm(self.projectors[modality](feats))  # (N, T_m, D)
            rows.append(r)
            starts.append(s)
            tokens.extend(x.unbind(0))
        device = input_ids.device
        rows_t = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long, device=device)
        starts_t = torch.cat(starts) if starts else torch.zeros(0, dtype=torch.long, device=device)
        if not tokens:  # nothing new: an empty memory of the right width
            d = self.media_norm.normalized_shape[0]
            tokens_b = torch.zeros(input_ids.shape[0], 0, d, device=device, dtype=self.media_norm.weight.dtype)
            packed = MediaMemory(torch.zeros(input_ids.shape[0], 0, dtype=torch.long, device=device),
                                 torch.zeros(input_ids.shape[0], 0, dtype=torch.bool, device=device), {"x": tokens_b})
        else:
            packed, _ = pack(rows_t, starts_t, tokens, input_ids.shape[0])
        kv = {}
        for j, block in enumerate(self.blocks):
            kv[f"k{j}"], kv[f"v{j}"] = block.attn.kv(packed.tensors["x"])  # (B, M, D) each
        return MediaMemory(packed.positions, packed.valid, kv)

    def decoder_hook(self, input_ids: torch.Tensor, media: dict[str, torch.Tensor], placeholder_ids: dict[str, int],
                     *, cache=None, past: int = 0) -> LayerHook:
        """The function the decoder runs before each layer, closed over this pass's media memory and mask."""
        mem = remember(cache, self.NAME, self.memory(input_ids, media, placeholder_ids, past))
        B, T = input_ids.shape
        query_pos = torch.arange(past, past + T, device=input_ids.device)  # (T,)
        mask = visible(query_pos, mem).expand(B, -1, -1)  # (B, T, M)

        def before_layer(layer: int, hidden: torch.Tensor) -> torch.Tensor:
            if layer % self.every:
                return hidden
            j = layer // self.every
            return self.blocks[j](hidden, mem.tensors[f"k{j}"], mem.tensors[f"v{j}"], mask)

        return before_layer

    def gates(self) -> list[tuple[float, float]]:
        """tanh of each block's (attention, MLP) gate: how open the media path is."""
        return [(float(torch.tanh(b.attn_gate.detach())), float(torch.tanh(b.mlp_gate.detach()))) for b in self.blocks]

    def explain_values(self) -> dict[str, torch.Tensor] | None:
        """The gates (B, blocks, 2): gates() for every example of the last forward pass (they do not depend on
        the input); None before any forward pass."""
        if not self._batch:
            return None
        return {"tanh gates (attention, MLP) per block": torch.tensor(self.gates()).expand(self._batch, -1, -1)}
