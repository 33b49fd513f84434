"""Interactive fusion: co-attention layers in which text and media attend to each other before the decoder.

Media tokens are projected to the decoder width, then `layers` co-attention layers run, each with

    media:  m = m + self_attn(m) + attn(m -> text before the item's placeholder);  m = m + mlp(m)
    text:   x = x + tanh(gate) * attn(x -> media items whose placeholder is at or before x's position)

and the media tokens fill their placeholder slots (as in concat) while the text keeps its updated
embeddings. Both directions look only backwards in the sequence, so a prefix's result never changes when
text is appended: with a KV cache, the keys and values of every layer (text and media) are kept in
cache.media["interactive.text.<l>"] / ["interactive.media.<l>"], and a chat turn adds only its own.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mmdialog.fusion.common import Fusion, check_media, fill_slots, locate_items, pack, remember, visible
from mmdialog.modules import Attention, CrossAttention, GeluMLP, MediaMemory
from mmdialog.registry import FUSIONS


class CoAttentionLayer(nn.Module):
    def __init__(self, *, dim: int, heads: int, gate_init: float):
        super().__init__()
        self.text_norm = nn.LayerNorm(dim)
        self.media_norm = nn.LayerNorm(dim)
        self.text_from_media = CrossAttention(dim=dim, heads=heads)  # queries: text; keys/values: media
        self.media_from_text = CrossAttention(dim=dim, heads=heads)  # queries: media; keys/values: text
        self.media_self = Attention(dim=dim, heads=heads, causal=False)  # within one item
        self.mlp_norm = nn.LayerNorm(dim)
        self.mlp = GeluMLP(dim=dim, hidden_dim=4 * dim)
        self.text_gate = nn.Parameter(torch.tensor(float(gate_init)))

    def text_kv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, T, D) -> 2 x (B, T, D)
        return self.media_from_text.kv(self.text_norm(x))

    def media_kv(self, m: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, M, D) -> 2 x (B, M, D)
        return self.text_from_media.kv(self.media_norm(m))

    def update_text(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D); media keys/values (B, M, D); mask (B, T, M)."""
        return x + torch.tanh(self.text_gate) * self.text_from_media(self.text_norm(x), keys, values, mask)

    def update_media(self, m: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """m: (N, T_m, D) one item per row; text keys/values (N, S, D) of each item's row; mask (N, T_m, S)."""
        h = self.media_norm(m)
        m = m + self.media_self(h) + self.media_from_text(h, keys, values, mask)
        return m + self.mlp(self.mlp_norm(m))


@FUSIONS.register("interactive")
class InteractiveFusion(Fusion):
    NAME = "interactive"
    uses_cache = True
    mixes_positions = True  # text and media attend to each other across positions

    def __init__(self, *, in_dims: dict[str, int], out_dim: int, heads: int, layers: int, gate_init: float):
        super().__init__()
        self.projectors = nn.ModuleDict(
            {m: nn.Sequential(nn.Linear(d, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim)) for m, d in in_dims.items()}
        )
        self.layers = nn.ModuleList(CoAttentionLayer(dim=out_dim, heads=heads, gate_init=gate_init) for _ in range(layers))
        self.out_norm = nn.LayerNorm(out_dim)
        self.out_proj = nn.Linear(out_dim, out_dim)
        self._batch = 0  # examples in the last forward pass (explain_values)

    def forward(self, token_embeds: torch.Tensor, input_ids: torch.Tensor, media: dict[str, torch.Tensor],
                placeholder_ids: dict[str, int], *, cache=None, past: int = 0) -> torch.Tensor:
        """token_embeds: (B, T, D); media[m]: (N_m, T_m, d_m). Returns (B, T, D)."""
        check_media(media, placeholder_ids)
        B, T, _ = token_embeds.shape
        self._batch = B
        mods, rows, starts, states = [], [], [], []
        for modality, placeholder_id in placeholder_ids.items():
            feats = media.get(modality)
            slots = feats.shape[1] if feats is not None else 1
            r, s = locate_items(input_ids, feats, modality, placeholder_id, slots, past)
            if feats is not None and feats.shape[0]:
                mods.append(modality)
                rows.append(r)
                starts.append(s)
                states.append(self.projectors[modality](feats))  # (N_m, T_m, D)
        is_media = torch.zeros_like(input_ids, dtype=torch.bool)
        for placeholder_id in placeholder_ids.values():
            is_media |= input_ids == placeholder_id
        text_pos = torch.arange(past, past + T, device=input_ids.device).expand(B, T)  # (B, T)
        all_rows = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long, device=input_ids.device)
        all_starts = torch.cat(starts) if starts else torch.zeros(0, dtype=torch.long, device=input_ids.device)

        x = token_embeds
        for l, layer in enumerate(self.layers):
            tk, tv = layer.text_kv(x)  # (B, T, D)
            text = remember(cache, f"{self.NAME}.text.{l}", MediaMemory(text_pos, ~is_media, {"k": tk, "v": tv}))
            items = [t for s in states for t in s.unbind(0)]  # one (T_i, D) per item
            if items:
                packed, _ = pack(all_rows, all_starts, items, B)
                mk, mv = layer.media_kv(packed.tensors["x"])  # (B, M, D)
                new = MediaMemory(packed.positions, packed.valid, {"k": mk, "v": mv})
            else:
                new = MediaMemory(text_pos[:, :0], ~is_media[:, :0], {"k": tk[:, :0], "v": tv[:, :0]})
            mem = remember(cache, f"{self.NAME}.media.{l}", new)
            x_next = layer.update_text(x, mem.tensors["k"], mem.tensors["v"], visible(text_pos, mem))
            new_states = []
            for s, r, st in zip(states, rows, starts):
                # each item sees the text of its own row at positions before its placeholder
                mask = (text.positions[r] < st[:, None]) & text.valid[r]  # (N, S)
                mask = mask[:, None, :].expand(-1, s.shape[1], -1)  # (N, T_m, S)
                new_states.append(layer.update_media(s, text.tensors["k"][r], text.tensors["v"][r], mask))
            x, states = x_next, new_states
        x = x.to(token_embeds.dtype)
        for modality, s in zip(mods, states):
            x = fill_slots(x, input_ids, placeholder_ids[modality], self.out_proj(self.out_norm(s)))
        return x

    def explain_values(self) -> dict[str, torch.Tensor] | None:
        """tanh of each layer's text gate (B, layers), how much the text takes from the media, for every example
        of the last forward pass (the gates do not depend on the input); None before any forward pass."""
        if not self._batch:
            return None
        gates = torch.stack([torch.tanh(layer.text_gate.detach()) for layer in self.layers])  # (layers,)
        return {"tanh text gate per layer": gates.expand(self._batch, -1)}
