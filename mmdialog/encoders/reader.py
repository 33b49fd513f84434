"""The user-turn reader: a frozen pretrained sentence encoder reads each user turn; the decoder gets its meaning.

A decoder trained from scratch on a small world knows only the wordings it was trained on: a question in
words it never saw ("... we mentioned before?" where training said "talked about earlier") reads as
something else. A pretrained sentence encoder (e.g. all-MiniLM-L6-v2) places the two wordings close
together. The reader gives every token of a user turn W · e, e the encoder's normalised mean-pooled
embedding of the turn's text and W a trained (dim x d_enc) projection that starts at zero, so a model
with a reader starts exactly as the same model without one.

    user turn texts --processor: reader.tokenize--> reader_ids (N, L), reader_mask (N, L)
    --frozen encoder, mean pool, L2 norm (cached per distinct turn)--> (N, d_enc) --proj--> (N, dim)
    reader_index (B, T): the row of reader_ids each token's turn is (-1: not in a user turn)
    --> added to the token embeddings before the fusion

The encoder is frozen and not part of the model's parameters or state dict: the checkpoint's config names
where it is read from (model.reader.path), as it names the tokenizer's vocabulary; only the projection is
trained and saved. Its embeddings are cached by the turn's token ids (a bounded LRU), so in training each
distinct turn is encoded once, and a chat session encodes only its new turns.
"""

from __future__ import annotations

import threading
from collections import OrderedDict

import torch
import torch.nn as nn

from mmdialog.errors import MMDialogError


class TurnReader(nn.Module):
    """encoder: a text encoder with tokenize(texts) -> {input_ids, attention_mask} and forward(ids, mask) ->
    (N, L, d) (the hf_text encoder); dim: the decoder's width; cache_size: turns whose embeddings are kept."""

    def __init__(self, encoder: nn.Module, dim: int, *, cache_size: int = 200_000):
        super().__init__()
        if not callable(getattr(encoder, "tokenize", None)):
            raise MMDialogError(f"the user-turn reader needs a text encoder with its own tokenizer (hf_text with a "
                                f"path); {type(encoder).__name__} has none")
        encoder.eval()
        for p in encoder.parameters():
            p.requires_grad_(False)
        object.__setattr__(self, "encoder", encoder)  # not a submodule: frozen, not saved, not optimised
        self.proj = nn.Linear(encoder.dim, dim, bias=False)
        nn.init.zeros_(self.proj.weight)
        self.cache_size = cache_size
        self._cache: OrderedDict[tuple[int, ...], torch.Tensor] = OrderedDict()  # turn ids -> (d_enc,) float32
        self._texts: OrderedDict[str, list[int]] = OrderedDict()  # text -> its reader ids
        self._lock = threading.RLock()  # the server's sessions share the model and its caches

    def __getstate__(self):  # copies and pickles (export's deepcopy, DDP) get a lock of their own
        state = self.__dict__.copy()
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._lock = threading.RLock()

    def _apply(self, fn, recurse: bool = True):  # .to(device) / .float() reach the frozen encoder too
        super()._apply(fn, recurse)
        self.encoder._apply(fn, recurse)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.encoder.eval()  # frozen: no dropout, ever
        return self

    @property
    def stats(self) -> dict[str, int]:
        return {"cached_turns": len(self._cache)}

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """The encoder's ids of each text (cut at its length limit), remembered per text."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._texts))
            got = {}
            if missing:
                enc = self.encoder.tokenize(missing)
                for t, ids, m in zip(missing, enc["input_ids"].tolist(), enc["attention_mask"].tolist()):
                    got[t] = ids[:sum(m)]
                    self._remember(self._texts, t, got[t])
            out = []
            for t in texts:
                ids = got.get(t) or self._texts[t]  # (a batch larger than the cache evicts its own first texts)
                if t in self._texts:
                    self._texts.move_to_end(t)
                out.append(ids)
            return out

    def _remember(self, cache: OrderedDict, key, value) -> None:
        cache[key] = value
        if len(cache) > self.cache_size:
            cache.popitem(last=False)

    @torch.no_grad()
    def warm(self, turns: list[list[int]], progress: bool = False) -> int:
        """Encode the turns not cached yet (reader ids each, e.g. a training set's), by length in batches of 256,
        before they are needed. Returns how many were encoded."""
        with self._lock:
            return len(self._encode_new([tuple(t) for t in turns], self.proj.weight.device, progress))

    def _encode_new(self, keys: list[tuple[int, ...]], device: torch.device,
                    progress: bool = False) -> dict[tuple[int, ...], torch.Tensor]:
        """Encode the keys not cached yet, by length in batches of 256; their embeddings (also now cached)."""
        from tqdm import tqdm

        new = sorted(set(keys) - self._cache.keys(), key=len)  # by length: little padding within a batch
        got = {}
        for i in tqdm(range(0, len(new), 256), desc=f"reading {len(new)} user turns", disable=not progress,
                      leave=False):
            got.update(self._encode(new[i:i + 256], device))
        return got

    def _encode(self, chunk: list[tuple[int, ...]], device: torch.device) -> dict[tuple[int, ...], torch.Tensor]:
        from mmdialog.encoders.text import mean_pool

        L = max(len(k) for k in chunk)
        ids = torch.zeros(len(chunk), L, dtype=torch.long)
        mask = torch.zeros(len(chunk), L, dtype=torch.long)
        for j, k in enumerate(chunk):
            ids[j, :len(k)], mask[j, :len(k)] = torch.tensor(k), 1
        ids, mask = ids.to(device), mask.to(device)
        with torch.autocast(device.type, enabled=False):
            h = self.encoder(ids, mask).float()  # (n, L, d_enc)
        e = nn.functional.normalize(mean_pool(h, mask), dim=-1).cpu()
        for k, v in zip(chunk, e):
            self._remember(self._cache, k, v)
        return dict(zip(chunk, e))

    @torch.no_grad()
    def embed(self, reader_ids: torch.Tensor, reader_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) ids and mask -> (N, d_enc) float32 normalised sentence embeddings (cached per turn)."""
        keys = [tuple(r[:n]) for r, n in zip(reader_ids.tolist(), reader_mask.sum(1).tolist())]
        device = reader_ids.device
        with self._lock:
            got = self._encode_new(keys, device)  # the encoder runs on the new turns only
            out = []
            for k in keys:
                if k in self._cache:
                    self._cache.move_to_end(k)
                out.append(got[k] if k in got else self._cache[k])
        if not out:
            return torch.zeros(0, self.encoder.dim, device=device)
        return torch.stack(out).to(device)

    def forward(self, reader_ids: torch.Tensor, reader_mask: torch.Tensor) -> torch.Tensor:
        """(N, L) ids and mask of N user turns -> (N, dim): what each turn's tokens get added."""
        e = self.embed(reader_ids, reader_mask)  # (N, d_enc), no gradient: the encoder is frozen
        return self.proj(e.to(self.proj.weight.dtype))

    def add_to(self, token_embeds: torch.Tensor, reader_ids: torch.Tensor, reader_mask: torch.Tensor,
               reader_index: torch.Tensor) -> torch.Tensor:
        """token_embeds (B, T, D) + each user-turn token's reader feature; reader_index (B, T), -1 elsewhere."""
        if reader_index.shape != token_embeds.shape[:2]:
            raise MMDialogError(f"reader_index has shape {tuple(reader_index.shape)}, the tokens "
                                f"{tuple(token_embeds.shape[:2])}")
        n = reader_ids.shape[0]
        if reader_index.numel() and int(reader_index.max()) >= n:
            raise MMDialogError(f"reader_index points at turn {int(reader_index.max())} of {n} reader rows")
        if n == 0:
            return token_embeds
        feats = self(reader_ids, reader_mask).to(token_embeds.dtype)  # (N, D)
        picked = feats[reader_index.clamp(min=0)]  # (B, T, D)
        return token_embeds + picked * (reader_index >= 0).unsqueeze(-1).to(token_embeds.dtype)
