"""The transformer encoders on one skeleton (encoders/common.py TransformerEncoder): the state_dict keys, their
order and shapes, and the outputs for a fixed seed are those of the encoders before the skeleton (frozen here
from the code of commit ab2ada0), so existing checkpoints, and the optimizer states saved with them, load."""

import pytest
import torch

from mmdialog.encoders.common import TransformerEncoder
from mmdialog.registry import ENCODERS

VIT = {"name": "vit", "image_size": 16, "patch_size": 8, "dim": 16, "depth": 2, "heads": 2, "mlp_ratio": 2.0}
CONFIGS = {
    "vit": dict(image_size=16, patch_size=8, dim=16, depth=2, heads=2, mlp_ratio=2.0),
    "audio_transformer": dict(sample_rate=8000, clip_seconds=0.5, n_mels=16, n_fft=256, hop_length=80, dim=24, depth=2,
                              heads=2),
    "video_frames": dict(num_frames=4, frame=VIT, tokens_per_frame=4, dim=24, depth=2, heads=2),
    "video_tubelet": dict(num_frames=4, image_size=16, tubelet=2, patch_size=8, dim=24, depth=2, heads=2),
}

# state_dict entries in order, 'key shape' (shape as d0xd1x...), before the skeleton
STATE = {
    "vit": """
        pos_embed 1x4x16
        patch_embed.weight 16x3x8x8
        patch_embed.bias 16
        blocks.0.attn_norm.weight 16
        blocks.0.attn_norm.bias 16
        blocks.0.attn.qkv.weight 48x16
        blocks.0.attn.qkv.bias 48
        blocks.0.attn.out_proj.weight 16x16
        blocks.0.attn.out_proj.bias 16
        blocks.0.mlp_norm.weight 16
        blocks.0.mlp_norm.bias 16
        blocks.0.mlp.fc.weight 32x16
        blocks.0.mlp.fc.bias 32
        blocks.0.mlp.out_proj.weight 16x32
        blocks.0.mlp.out_proj.bias 16
        blocks.1.attn_norm.weight 16
        blocks.1.attn_norm.bias 16
        blocks.1.attn.qkv.weight 48x16
        blocks.1.attn.qkv.bias 48
        blocks.1.attn.out_proj.weight 16x16
        blocks.1.attn.out_proj.bias 16
        blocks.1.mlp_norm.weight 16
        blocks.1.mlp_norm.bias 16
        blocks.1.mlp.fc.weight 32x16
        blocks.1.mlp.fc.bias 32
        blocks.1.mlp.out_proj.weight 16x32
        blocks.1.mlp.out_proj.bias 16
        norm.weight 16
        norm.bias 16
    """.split("\n"),
    "audio_transformer": """
        pos_embed 1x25x24
        conv1.weight 24x16x3
        conv1.bias 24
        conv2.weight 24x24x3
        conv2.bias 24
        blocks.0.attn_norm.weight 24
        blocks.0.attn_norm.bias 24
        blocks.0.attn.qkv.weight 72x24
        blocks.0.attn.qkv.bias 72
        blocks.0.attn.out_proj.weight 24x24
        blocks.0.attn.out_proj.bias 24
        blocks.0.mlp_norm.weight 24
        blocks.0.mlp_norm.bias 24
        blocks.0.mlp.fc.weight 96x24
        blocks.0.mlp.fc.bias 96
        blocks.0.mlp.out_proj.weight 24x96
        blocks.0.mlp.out_proj.bias 24
        blocks.1.attn_norm.weight 24
        blocks.1.attn_norm.bias 24
        blocks.1.attn.qkv.weight 72x24
        blocks.1.attn.qkv.bias 72
        blocks.1.attn.out_proj.weight 24x24
        blocks.1.attn.out_proj.bias 24
        blocks.1.mlp_norm.weight 24
        blocks.1.mlp_norm.bias 24
        blocks.1.mlp.fc.weight 96x24
        blocks.1.mlp.fc.bias 96
        blocks.1.mlp.out_proj.weight 24x96
        blocks.1.mlp.out_proj.bias 24
        norm.weight 24
        norm.bias 24
    """.split("\n"),
    "video_frames": """
        time_embed 1x4x1x24
        space_embed 1x1x4x24
        frame_encoder.pos_embed 1x4x16
        frame_encoder.patch_embed.weight 16x3x8x8
        frame_encoder.patch_embed.bias 16
        frame_encoder.blocks.0.attn_norm.weight 16
        frame_encoder.blocks.0.attn_norm.bias 16
        frame_encoder.blocks.0.attn.qkv.weight 48x16
        frame_encoder.blocks.0.attn.qkv.bias 48
        frame_encoder.blocks.0.attn.out_proj.weight 16x16
        frame_encoder.blocks.0.attn.out_proj.bias 16
        frame_encoder.blocks.0.mlp_norm.weight 16
        frame_encoder.blocks.0.mlp_norm.bias 16
        frame_encoder.blocks.0.mlp.fc.weight 32x16
        frame_encoder.blocks.0.mlp.fc.bias 32
        frame_encoder.blocks.0.mlp.out_proj.weight 16x32
        frame_encoder.blocks.0.mlp.out_proj.bias 16
        frame_encoder.blocks.1.attn_norm.weight 16
        frame_encoder.blocks.1.attn_norm.bias 16
        frame_encoder.blocks.1.attn.qkv.weight 48x16
        frame_encoder.blocks.1.attn.qkv.bias 48
        frame_encoder.blocks.1.attn.out_proj.weight 16x16
        frame_encoder.blocks.1.attn.out_proj.bias 16
        frame_encoder.blocks.1.mlp_norm.weight 16
        frame_encoder.blocks.1.mlp_norm.bias 16
        frame_encoder.blocks.1.mlp.fc.weight 32x16
        frame_encoder.blocks.1.mlp.fc.bias 32
        frame_encoder.blocks.1.mlp.out_proj.weight 16x32
        frame_encoder.blocks.1.mlp.out_proj.bias 16
        frame_encoder.norm.weight 16
        frame_encoder.norm.bias 16
        proj.weight 24x16
        proj.bias 24
        blocks.0.attn_norm.weight 24
        blocks.0.attn_norm.bias 24
        blocks.0.attn.qkv.weight 72x24
        blocks.0.attn.qkv.bias 72
        blocks.0.attn.out_proj.weight 24x24
        blocks.0.attn.out_proj.bias 24
        blocks.0.mlp_norm.weight 24
        blocks.0.mlp_norm.bias 24
        blocks.0.mlp.fc.weight 96x24
        blocks.0.mlp.fc.bias 96
        blocks.0.mlp.out_proj.weight 24x96
        blocks.0.mlp.out_proj.bias 24
        blocks.1.attn_norm.weight 24
        blocks.1.attn_norm.bias 24
        blocks.1.attn.qkv.weight 72x24
        blocks.1.attn.qkv.bias 72
        blocks.1.attn.out_proj.weight 24x24
        blocks.1.attn.out_proj.bias 24
        blocks.1.mlp_norm.weight 24
        blocks.1.mlp_norm.bias 24
        blocks.1.mlp.fc.weight 96x24
        blocks.1.mlp.fc.bias 96
        blocks.1.mlp.out_proj.weight 24x96
        blocks.1.mlp.out_proj.bias 24
        norm.weight 24
        norm.bias 24
    """.split("\n"),
    "video_tubelet": """
        pos_embed 1x8x24
        patch_embed.weight 24x3x2x8x8
        patch_embed.bias 24
        blocks.0.attn_norm.weight 24
        blocks.0.attn_norm.bias 24
        blocks.0.attn.qkv.weight 72x24
        blocks.0.attn.qkv.bias 72
        blocks.0.attn.out_proj.weight 24x24
        blocks.0.attn.out_proj.bias 24
        blocks.0.mlp_norm.weight 24
        blocks.0.mlp_norm.bias 24
        blocks.0.mlp.fc.weight 96x24
        blocks.0.mlp.fc.bias 96
        blocks.0.mlp.out_proj.weight 24x96
        blocks.0.mlp.out_proj.bias 24
        blocks.1.attn_norm.weight 24
        blocks.1.attn_norm.bias 24
        blocks.1.attn.qkv.weight 72x24
        blocks.1.attn.qkv.bias 72
        blocks.1.attn.out_proj.weight 24x24
        blocks.1.attn.out_proj.bias 24
        blocks.1.mlp_norm.weight 24
        blocks.1.mlp_norm.bias 24
        blocks.1.mlp.fc.weight 96x24
        blocks.1.mlp.fc.bias 96
        blocks.1.mlp.out_proj.weight 24x96
        blocks.1.mlp.out_proj.bias 24
        norm.weight 24
        norm.bias 24
    """.split("\n"),
}
# abs-sums of forward(x), forward_levels(x, (0, 1, -1)) and of the state_dict for torch.manual_seed(0), before
FINGERPRINT = {
    "vit": (102.19416334293783, 306.38242273870856, 256.2571914841028),
    "audio_transformer": (981.4734709145414, 2862.8266743394342, 536.8291201678962),
    "video_frames": (628.0959758676472, 1879.8590124303591, 605.8709544800969),
    "video_tubelet": (310.50570205645636, 932.9672269638395, 577.8174265088209),
}
ATTRS = {"vit": (4, 16, 3), "audio_transformer": (25, 24, 3), "video_frames": (16, 24, 3), "video_tubelet": (8, 24, 3)}  # num_tokens, dim, num_levels


def entries(name):
    return [line.split() for line in STATE[name] if line.strip()]


def inputs(name):
    g = torch.Generator().manual_seed(1)
    if name == "vit":
        return torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    if name.startswith("audio"):
        return torch.sin(torch.arange(4000) * 0.3)[None].repeat(2, 1) * torch.rand(2, 1, generator=g)
    return torch.rand(2, 4, 3, 16, 16, generator=g) * 2 - 1


@pytest.mark.parametrize("name", sorted(STATE))
def test_state_dict_keys_order_and_shapes_are_unchanged(name):
    enc = ENCODERS.get(name)(**CONFIGS[name])
    assert isinstance(enc, TransformerEncoder) and enc.NAME == name
    got = [[k, "x".join(map(str, v.shape)) or "()"] for k, v in enc.state_dict().items()]
    assert got == entries(name)
    # parameters in the same order too: an optimizer state saved with a checkpoint maps onto them by position
    assert [k for k, _ in enc.named_parameters()] == [k for k, _ in entries(name) if k in dict(enc.named_parameters())]
    assert (enc.num_tokens, enc.dim, enc.num_levels) == ATTRS[name]
    # the default sizes have the same depth (2): the same names
    assert list(ENCODERS.get(name)().state_dict()) == [k for k, _ in entries(name)]


@pytest.mark.parametrize("name", sorted(STATE))
def test_outputs_for_a_fixed_seed_are_unchanged(name):
    torch.manual_seed(0)
    enc = ENCODERS.get(name)(**CONFIGS[name]).eval()
    x = inputs(name)
    with torch.no_grad():
        out, levels = enc(x), enc.forward_levels(x, (0, 1, -1))
    weights = sum(v.double().abs().sum() for v in enc.state_dict().values())
    got = (float(out.double().abs().sum()), float(levels.double().abs().sum()), float(weights))
    assert got == pytest.approx(FINGERPRINT[name], rel=1e-5)
    torch.testing.assert_close(levels[:, 2], out)
