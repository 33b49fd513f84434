"""Keys and values of past positions, so that decoding feeds one new token instead of the whole sequence."""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer keys and values, each (B, H_kv, T, hs), for the T positions fed so far.

    Layers are added on their first update, so one empty KVCache() fits any decoder. Tensors are
    stored in the dtype they arrive in (bf16 under autocast). Appending is a torch.cat: it copies,
    but it never writes into a tensor another cache (a clone, a crop) may still be reading.
    """

    def __init__(self):
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append k, v (B, H_kv, T_new, hs) to `layer`; return all of that layer's keys and values (B, H_kv, T, hs)."""
        if layer == len(self.keys):
            self.keys.append(k)
            self.values.append(v)
        elif layer < len(self.keys):
            self.keys[layer] = torch.cat([self.keys[layer], k], dim=2)
            self.values[layer] = torch.cat([self.values[layer], v], dim=2)
        else:
            raise ValueError(f"KVCache holds {len(self.keys)} layers; layer {layer} must follow them in order")
        return self.keys[layer], self.values[layer]

    @property
    def seq_len(self) -> int:
        """Positions cached (read it before a forward pass: layer 0 grows before the others during one)."""
        return self.keys[0].shape[2] if self.keys else 0

    def crop(self, n: int) -> None:
        """Keep the first n positions, e.g. to roll back a generated reply."""
        if not 0 <= n <= self.seq_len:
            raise ValueError(f"cannot crop a KV cache of {self.seq_len} positions to {n}")
        self.keys = [k[:, :, :n] for k in self.keys]
        self.values = [v[:, :, :n] for v in self.values]

    def clone(self) -> KVCache:
        copy = KVCache()
        copy.keys = [k.clone() for k in self.keys]
        copy.values = [v.clone() for v in self.values]
        return copy

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)
