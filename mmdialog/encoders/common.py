"""Pieces the encoders share: the transformer-encoder skeleton (vit, audio_transformer, video_frames and
video_tubelet differ only in their stem), a bidirectional transformer stack, level selection, weight init."""

from __future__ import annotations

import torch
import torch.nn as nn

from mmdialog.errors import MMDialogError
from mmdialog.modules import Attention, GeluMLP, TransformerBlock


def encoder_blocks(*, dim: int, depth: int, heads: int, mlp_ratio: float) -> nn.ModuleList:
    """depth pre-norm transformer blocks in which every token sees every other (no mask, no RoPE)."""
    return nn.ModuleList(
        TransformerBlock(
            attn=Attention(dim=dim, heads=heads, causal=False, bias=True),
            mlp=GeluMLP(dim=dim, hidden_dim=int(dim * mlp_ratio)),
            attn_norm=nn.LayerNorm(dim),
            mlp_norm=nn.LayerNorm(dim),
        )
        for _ in range(depth)
    )


def init_linear(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def select_levels(features: list[torch.Tensor], levels, encoder: str) -> torch.Tensor:
    """features: num_levels tensors (N, T, d), level 0 the embedding and the last the output.
    Returns the chosen levels stacked (N, L, T, d); negative indices count from the last level."""
    n = len(features)
    picked = []
    for lv in levels:
        if not -n <= lv < n:
            raise MMDialogError(f"model.fusion.levels asks for level {lv} but the {encoder} encoder has levels "
                                f"0..{n - 1} (or -{n}..-1)")
        picked.append(features[lv])
    return torch.stack(picked, 1)


class TransformerEncoder(nn.Module):
    """The skeleton of the transformer encoders; a subclass supplies only its stem.

        input --stem (embed)--> (N, ..., dim) --+ learned positions, flattened--> (N, num_tokens, dim)
        --depth bidirectional blocks--> num_levels = depth + 1 levels, each through the final LayerNorm

    Level 0 is the stem's tokens with their positions, level i the output of block i; forward gives the
    last level (N, num_tokens, dim), forward_levels(x, levels) the chosen ones (N, L, num_tokens, dim).

    stem: the stem's modules, registered under these names in this order (their state_dict keys). They
    are built before the blocks and get the skeleton's init (init_linear) before the blocks do, except
    those named in `built` (parts that initialised themselves, e.g. a frame encoder). positions: name ->
    shape of each learned position parameter (zeros, then normal with std 0.02, in this order), added to
    the stem's output, which they must broadcast against; default one pos_embed (1, num_tokens, dim).
    """

    NAME = "transformer"  # the registry name, in errors

    def __init__(self, *, stem: dict[str, nn.Module], num_tokens: int, dim: int, depth: int, heads: int,
                 mlp_ratio: float, positions: dict[str, tuple[int, ...]] | None = None, built: tuple[str, ...] = ()):
        super().__init__()
        for name, module in stem.items():
            self.add_module(name, module)
        self.num_tokens, self.dim, self.num_levels = num_tokens, dim, depth + 1
        positions = {"pos_embed": (1, num_tokens, dim)} if positions is None else positions
        for name, shape in positions.items():
            self.register_parameter(name, nn.Parameter(torch.zeros(*shape)))
        self.position_names = tuple(positions)
        self.blocks = encoder_blocks(dim=dim, depth=depth, heads=heads, mlp_ratio=mlp_ratio)
        self.norm = nn.LayerNorm(dim)
        # the order of these draws fixes the initial weights of a seed (and so every checkpoint's start)
        for name, module in stem.items():
            if name not in built:
                module.apply(init_linear)
        self.blocks.apply(init_linear)
        for name in self.position_names:
            nn.init.normal_(getattr(self, name), std=0.02)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The stem: the raw input (checked) -> tokens (N, ..., dim) in the layout the positions broadcast to."""
        raise NotImplementedError(f"{type(self).__name__} must define its stem (embed)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden_levels(x)[-1]

    def forward_levels(self, x: torch.Tensor, levels) -> torch.Tensor:
        return select_levels(self.hidden_levels(x), levels, self.NAME)

    def hidden_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every level, num_levels tensors (N, num_tokens, dim)."""
        x = self.embed(x)  # (N, ..., dim)
        for name in self.position_names:
            x = x + getattr(self, name)
        x = x.flatten(1, -2)  # (N, num_tokens, dim)
        levels = [x]
        for block in self.blocks:
            x = block(x)  # bidirectional: every token sees every other
            levels.append(x)
        # the final norm on every level: the deeper ones' scale grows with depth, the fusions compare them
        return [self.norm(h) for h in levels]


def check_input(x: torch.Tensor, expected: tuple, what: str) -> None:
    """Raise naming the expected and the given shape; None in expected matches any size."""
    if x.dim() != len(expected) or any(e is not None and e != g for e, g in zip(expected, x.shape)):
        shape = ", ".join("N" if e is None else str(e) for e in expected)
        raise MMDialogError(f"the {what} takes ({shape}), got a tensor of shape {tuple(x.shape)}")
