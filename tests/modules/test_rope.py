import pytest
import torch

from mmdialog.errors import MMDialogError
from mmdialog.modules import RotaryEmbedding


def test_rotation_keeps_shape_dtype_and_norm():
    rope = RotaryEmbedding(head_dim=8)
    x = torch.randn(2, 3, 5, 8)
    y = rope(x, torch.arange(5))
    assert y.shape == x.shape and y.dtype == x.dtype
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1))
    torch.testing.assert_close(y[:, :, 0], x[:, :, 0])  # position 0 is not rotated
    assert not torch.allclose(y[:, :, 1:], x[:, :, 1:])


def test_scores_depend_only_on_relative_position():
    rope = RotaryEmbedding(head_dim=16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        return (rope(q, torch.tensor([m])) * rope(k, torch.tensor([n]))).sum()

    torch.testing.assert_close(score(7, 3), score(107, 103), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(7, 3), score(7, 4))


def test_offset_positions_match_a_longer_sequence():
    rope = RotaryEmbedding(head_dim=8)
    x = torch.randn(2, 2, 10, 8)
    full = rope(x, torch.arange(10))
    torch.testing.assert_close(rope(x[:, :, 6:], torch.arange(6, 10)), full[:, :, 6:])
    per_row = torch.arange(10).expand(2, 10)  # (B, T) positions give the same as shared (T,) ones
    torch.testing.assert_close(rope(x, per_row), full)


def test_angles_are_fp32_for_bf16_inputs():
    rope = RotaryEmbedding(head_dim=8)
    x = torch.randn(1, 1, 4, 8)
    pos = torch.arange(4000, 4004)
    y = rope(x.bfloat16(), pos)
    assert y.dtype == torch.bfloat16
    # bf16 angles near 4000 rad are off by up to 16 rad; fp32 angles leave only bf16 rounding of the inputs
    torch.testing.assert_close(y.float(), rope(x, pos), atol=3e-2, rtol=2e-2)


def test_odd_head_dim_is_rejected():
    with pytest.raises(MMDialogError, match="7"):
        RotaryEmbedding(head_dim=7)
