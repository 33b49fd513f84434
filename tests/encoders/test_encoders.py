"""Shapes, token counts and levels of the own encoders (tiny sizes)."""

import pytest
import torch

from mmdialog.encoders import (AudioCNNEncoder, AudioTransformerEncoder, BertEncoder, FrameTemporalEncoder,
                               ResNetEncoder, TubeletEncoder)
from mmdialog.encoders.text import mean_pool
from mmdialog.errors import MMDialogError
from mmdialog.registry import ENCODERS

VIT = {"name": "vit", "image_size": 16, "patch_size": 8, "dim": 16, "depth": 1, "heads": 2, "mlp_ratio": 2.0}


def make(name):
    torch.manual_seed(0)
    return {
        "resnet": lambda: ResNetEncoder(image_size=16, dim=24, widths=(8, 16), blocks=1),
        "audio_cnn": lambda: AudioCNNEncoder(sample_rate=8000, clip_seconds=0.5, n_mels=16, n_fft=256, hop_length=80,
                                             dim=24, widths=(8, 16)),
        "audio_transformer": lambda: AudioTransformerEncoder(sample_rate=8000, clip_seconds=0.5, n_mels=16, n_fft=256,
                                                             hop_length=80, dim=24, depth=2, heads=2),
        "video_frames": lambda: FrameTemporalEncoder(num_frames=4, frame=VIT, tokens_per_frame=4, dim=24, depth=1, heads=2),
        "video_tubelet": lambda: TubeletEncoder(num_frames=4, image_size=16, tubelet=2, patch_size=8, dim=24, depth=2,
                                                heads=2),
    }[name]().eval()


def inputs(name, n=2):
    g = torch.Generator().manual_seed(1)
    if name == "resnet":
        return torch.rand(n, 3, 16, 16, generator=g) * 2 - 1
    if name.startswith("audio"):
        return torch.sin(torch.arange(4000) * 0.3)[None].repeat(n, 1) * torch.rand(n, 1, generator=g)
    return torch.rand(n, 4, 3, 16, 16, generator=g) * 2 - 1


# name: expected num_tokens
TOKENS = {"resnet": (16 // 4) ** 2, "audio_cnn": (4000 // 80) // 4, "audio_transformer": (50 - 1) // 2 + 1,
          "video_frames": 4 * 4, "video_tubelet": 2 * 2 * 2}


@pytest.mark.parametrize("name", sorted(TOKENS))
def test_shapes_token_counts_levels_and_independence(name):
    enc = make(name)
    assert ENCODERS.get(name) is type(enc)
    assert enc.num_tokens == TOKENS[name] and enc.dim == 24
    x = inputs(name)
    with torch.no_grad():
        out = enc(x)
        assert out.shape == (2, enc.num_tokens, 24) and torch.isfinite(out).all()
        torch.testing.assert_close(enc(x[1:]), out[1:], atol=1e-5, rtol=1e-4)  # items encoded independently
        levels = enc.forward_levels(x, (0, -1))
        assert levels.shape == (2, 2, enc.num_tokens, 24)
        torch.testing.assert_close(levels[:, 1], out)
        assert not torch.allclose(levels[:, 0], levels[:, 1])
    with pytest.raises(MMDialogError, match="levels asks for level 9"):
        enc.forward_levels(x, (9,))


@pytest.mark.parametrize("name", sorted(TOKENS))
def test_wrong_input_shape_names_the_numbers(name):
    enc = make(name)
    x = inputs(name)
    with pytest.raises(MMDialogError, match=r"takes \(N, .*got a tensor of shape"):
        enc(x[..., :-1] if name.startswith("audio") else x[..., :8, :8])


def test_encoders_learn_from_their_input():
    enc = make("audio_cnn").train()
    enc(inputs("audio_cnn")).square().mean().backward()
    unused = {f"level_proj.{i}.{w}" for i in range(2) for w in ("weight", "bias")}  # only the last level is output
    assert all((p.grad is not None) != (n in unused) for n, p in enc.named_parameters())


def test_bert_is_bidirectional_and_ignores_padding():
    torch.manual_seed(0)
    bert = BertEncoder(vocab_size=50, max_len=16, dim=24, depth=2, heads=2).eval()
    ids = torch.tensor([[5, 6, 7, 8], [5, 6, 7, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    with torch.no_grad():
        out = bert(ids, mask)
        assert out.shape == (2, 4, 24)
        torch.testing.assert_close(out[1, :3], bert(ids[1:, :3])[0], atol=1e-5, rtol=1e-4)  # the pad changes nothing
        assert not torch.allclose(out[0, 0], out[1, 0])  # the first token sees the last one
        emb = bert.embed(ids, mask)
        torch.testing.assert_close(emb[1], out[1, :3].mean(0))
    assert mean_pool(torch.ones(1, 3, 2), torch.tensor([[1, 0, 0]])).tolist() == [[1.0, 1.0]]
    with pytest.raises(MMDialogError, match="at most 16 tokens"):
        bert(torch.zeros(1, 17, dtype=torch.long))


def test_bad_sizes_are_named():
    with pytest.raises(MMDialogError, match="image size 18 is not a multiple"):
        ResNetEncoder(image_size=18, dim=8, widths=(8, 16))
    with pytest.raises(MMDialogError, match="tubelets of 3 frames"):
        TubeletEncoder(num_frames=4, image_size=16, tubelet=3, patch_size=8, dim=8, depth=1, heads=2)
    with pytest.raises(MMDialogError, match="tokens_per_frame must be a square"):
        FrameTemporalEncoder(num_frames=2, frame=VIT, tokens_per_frame=3, dim=8, depth=1, heads=2)
    with pytest.raises(MMDialogError, match="unknown config key model.encoders.video.frame.widht"):
        FrameTemporalEncoder(num_frames=2, frame={**VIT, "widht": 3}, dim=8, depth=1, heads=2)
