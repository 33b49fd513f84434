"""Keys and values of past positions, so that decoding feeds one new token instead of the whole sequence."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MediaMemory:
    """Entries a fusion keeps across cached forward passes, each tagged with an absolute sequence position.

    positions: (B, M) long, the position an entry belongs to (a media item's placeholder, a text token)
    valid:     (B, M) bool, False on padding (rows hold different numbers of entries) and masked entries
    tensors:   name -> (B, M, C), e.g. the keys and values of every cross-attention layer

    Frozen, and every change returns a new memory: a snapshot of a KVCache (a fork, an undo) may share it.
    """

    positions: torch.Tensor
    valid: torch.Tensor
    tensors: dict[str, torch.Tensor]

    @property
    def size(self) -> int:
        return self.positions.shape[1]

    def append(self, other: "MediaMemory") -> "MediaMemory":
        if set(other.tensors) != set(self.tensors):
            raise ValueError(f"memory entries hold {sorted(self.tensors)}, new ones {sorted(other.tensors)}")
        return MediaMemory(torch.cat([self.positions, other.positions], 1), torch.cat([self.valid, other.valid], 1),
                           {k: torch.cat([v, other.tensors[k]], 1) for k, v in self.tensors.items()})

    def crop(self, n: int) -> "MediaMemory":
        """Keep the entries of positions < n (columns no row keeps any more are dropped)."""
        valid = self.valid & (self.positions < n)  # (B, M)
        keep = valid.any(0)  # (M,)
        return MediaMemory(self.positions[:, keep], valid[:, keep], {k: v[:, keep] for k, v in self.tensors.items()})

    def clone(self) -> "MediaMemory":
        return MediaMemory(self.positions.clone(), self.valid.clone(), {k: v.clone() for k, v in self.tensors.items()})

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.positions, self.valid, *self.tensors.values()))


class KVCache:
    """Per-layer keys and values, each (B, H_kv, T, hs), for the T positions fed so far.

    Layers are added on their first update, so one empty KVCache() fits any decoder. Tensors are
    stored in the dtype they arrive in (bf16 under autocast). Appending is a torch.cat: it copies,
    but it never writes into a tensor another cache (a clone, a crop) may still be reading.
    """

    def __init__(self):
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        # What fusions keep beside the decoder's keys and values (cross-attention's media keys and values),
        # by name; cropped and cloned with them. Values are replaced, never changed in place.
        self.media: dict[str, MediaMemory] = {}

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
        self.media = {name: m.crop(n) for name, m in self.media.items()}

    def clone(self) -> KVCache:
        copy = KVCache()
        copy.keys = [k.clone() for k in self.keys]
        copy.values = [v.clone() for v in self.values]
        copy.media = {name: m.clone() for name, m in self.media.items()}
        return copy

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values) + \
            sum(m.nbytes for m in self.media.values())
