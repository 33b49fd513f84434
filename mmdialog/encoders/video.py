"""Video encoders: frames through an image encoder plus a temporal transformer, or 3D tubelet patches.

Both take (N, F, 3, H, W) frames normalised to [-1, 1], F = num_frames fixed (the processor samples that many
frames evenly over a clip with data/processor.py's sample_frames, the frame budget), and give (N, num_tokens, dim).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdialog.encoders.common import TransformerEncoder, check_input
from mmdialog.errors import MMDialogError
from mmdialog.registry import ENCODERS


@ENCODERS.register("video_frames")
class FrameTemporalEncoder(TransformerEncoder):
    """Each frame through an image encoder (any registered one, `frame` = its config), its tokens pooled to
    tokens_per_frame (a square number: an adaptive average over the patch grid; 1 = the mean) and projected
    to dim, then a temporal transformer over all frames' tokens (frame and within-frame positions learned).
    num_tokens = num_frames * tokens_per_frame.

    Stem: the frame encoder, the pooling and the projection; the rest is the TransformerEncoder skeleton,
    with factored positions time_embed (per frame) + space_embed (per token of a frame). Level 0: the
    projected per-frame tokens (before any temporal mixing); level i: after temporal block i."""

    NAME = "video_frames"

    def __init__(self, *, num_frames: int = 8, frame: dict | None = None, tokens_per_frame: int = 1, dim: int = 128,
                 depth: int = 2, heads: int = 4, mlp_ratio: float = 4.0):
        from mmdialog.config import build_part
        from mmdialog.registry import ENCODERS as registry

        frame = dict(frame or {"name": "vit", "image_size": 64, "patch_size": 16, "dim": 128, "depth": 2, "heads": 4,
                                "mlp_ratio": 4.0})
        frame_encoder = build_part(registry, frame, "model.encoders.video.frame")
        side = math.isqrt(tokens_per_frame)
        grid = math.isqrt(frame_encoder.num_tokens)
        if side * side != tokens_per_frame or side > grid:
            raise MMDialogError(f"tokens_per_frame must be a square number up to the frame encoder's "
                                f"{frame_encoder.num_tokens} tokens, got {tokens_per_frame}")
        if grid * grid != frame_encoder.num_tokens and tokens_per_frame != 1:
            raise MMDialogError("the frame encoder's tokens do not form a square grid: use tokens_per_frame=1")
        # the frame encoder initialised itself (built); the projection gets the skeleton's init
        super().__init__(stem={"frame_encoder": frame_encoder, "proj": nn.Linear(frame_encoder.dim, dim)},
                         built=("frame_encoder",), num_tokens=num_frames * tokens_per_frame, dim=dim, depth=depth,
                         heads=heads, mlp_ratio=mlp_ratio,
                         positions={"time_embed": (1, num_frames, 1, dim), "space_embed": (1, 1, tokens_per_frame, dim)})
        self.num_frames, self.image_size = num_frames, frame_encoder.image_size
        self.side, self.grid, self.tokens_per_frame = side, grid, tokens_per_frame

    def embed(self, videos: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        check_input(videos, (None, self.num_frames, 3, s, s), "video_frames encoder")
        N, Fr = videos.shape[:2]
        tokens = self.frame_encoder(videos.flatten(0, 1))  # (N*F, T_f, d_f)
        if self.tokens_per_frame == 1:
            tokens = tokens.mean(1, keepdim=True)  # (N*F, 1, d_f)
        elif self.side != self.grid:
            g = tokens.transpose(1, 2).reshape(N * Fr, -1, self.grid, self.grid)
            tokens = F.adaptive_avg_pool2d(g, self.side).flatten(2).transpose(1, 2)  # (N*F, side^2, d_f)
        # (N, F, tokens_per_frame, dim): the positions broadcast over it, then it is flattened frame-major
        return self.proj(tokens).view(N, Fr, self.tokens_per_frame, self.dim)


@ENCODERS.register("video_tubelet")
class TubeletEncoder(TransformerEncoder):
    """ViViT-style tubelets: a Conv3d with kernel = stride = (tubelet, patch, patch) cuts the clip into
    space-time patches, one token each, then bidirectional transformer blocks.
    num_tokens = (num_frames / tubelet) * (image_size / patch_size)**2.

    Stem: the Conv3d, tokens time-major; the rest is the TransformerEncoder skeleton."""

    NAME = "video_tubelet"

    def __init__(self, *, num_frames: int = 8, image_size: int = 64, tubelet: int = 2, patch_size: int = 16,
                 dim: int = 128, depth: int = 2, heads: int = 4, mlp_ratio: float = 4.0):
        if num_frames % tubelet or image_size % patch_size:
            raise MMDialogError(f"tubelets of {tubelet} frames x {patch_size}x{patch_size} pixels must tile clips of "
                                f"{num_frames} frames x {image_size}x{image_size}")
        patch_embed = nn.Conv3d(3, dim, kernel_size=(tubelet, patch_size, patch_size),
                                stride=(tubelet, patch_size, patch_size))
        super().__init__(stem={"patch_embed": patch_embed},
                         num_tokens=(num_frames // tubelet) * (image_size // patch_size) ** 2, dim=dim, depth=depth,
                         heads=heads, mlp_ratio=mlp_ratio)
        self.num_frames, self.image_size = num_frames, image_size

    def embed(self, videos: torch.Tensor) -> torch.Tensor:
        s = self.image_size
        check_input(videos, (None, self.num_frames, 3, s, s), "video_tubelet encoder")
        x = self.patch_embed(videos.transpose(1, 2))  # (N, dim, F/t, g, g)
        return x.flatten(2).transpose(1, 2)  # (N, num_tokens, dim), time-major
