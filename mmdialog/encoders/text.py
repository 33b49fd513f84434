"""A BERT-style text encoder: token + position embeddings, bidirectional transformer blocks, a padding mask.

Text encoders are not media encoders of MultimodalLM (its decoder reads the text itself); they embed
text on their own: sentence embeddings, retrieval, contrastive objectives. Same contract as the media
encoders: forward(input_ids (N, L), attention_mask (N, L)) -> (N, L, dim), num_tokens (the longest
input) and dim; mean_pool gives one vector per text.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from mmdialog.encoders.common import check_input, encoder_blocks, init_linear, select_levels
from mmdialog.errors import MMDialogError
from mmdialog.registry import ENCODERS


def mean_pool(tokens: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """(N, L, d) token states, (N, L) 1 = real -> (N, d) mean over the real tokens (sentence-transformers' pooling)."""
    if attention_mask is None:
        return tokens.mean(1)
    m = attention_mask.to(tokens.dtype).unsqueeze(-1)  # (N, L, 1)
    return (tokens * m).sum(1) / m.sum(1).clamp(min=1e-9)


@ENCODERS.register("bert")
class BertEncoder(nn.Module):
    def __init__(self, *, vocab_size: int, max_len: int = 512, dim: int = 128, depth: int = 2, heads: int = 4,
                 mlp_ratio: float = 4.0, pad_id: int = 0):
        super().__init__()
        self.num_tokens, self.dim, self.pad_id = max_len, dim, pad_id
        self.tok_embed = nn.Embedding(vocab_size, dim)
        self.pos_embed = nn.Embedding(max_len, dim)
        self.embed_norm = nn.LayerNorm(dim)
        self.blocks = encoder_blocks(dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio)
        self.norm = nn.LayerNorm(dim)
        self.num_levels = depth + 1
        self.apply(init_linear)
        nn.init.normal_(self.tok_embed.weight, std=0.02)
        nn.init.normal_(self.pos_embed.weight, std=0.02)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(N, L) ids, (N, L) 1 = real / 0 = pad -> (N, L, dim); pads see nothing and are seen by nothing."""
        return self._run(input_ids, attention_mask)[-1]

    def forward_levels(self, input_ids: torch.Tensor, levels, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return select_levels(self._run(input_ids, attention_mask), levels, "bert")

    def _run(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> list[torch.Tensor]:
        check_input(input_ids, (None, None), "bert encoder")
        N, L = input_ids.shape
        if L > self.num_tokens:
            raise MMDialogError(f"the bert encoder takes at most {self.num_tokens} tokens, got {L}")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise MMDialogError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}")
        x = self.embed_norm(self.tok_embed(input_ids) + self.pos_embed(torch.arange(L, device=input_ids.device)))
        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            keys = attention_mask.bool()[:, None, None, :]  # (N, 1, 1, L)
            mask = keys | torch.eye(L, dtype=torch.bool, device=x.device)  # a pad query sees itself, not NaN
        levels = [x]
        for block in self.blocks:
            x = block(x, mask=mask)
            levels.append(x)
        return [self.norm(h) for h in levels]

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(N, L) -> (N, dim) mean-pooled text embeddings."""
        return mean_pool(self(input_ids, attention_mask), attention_mask)
