import pytest
import torch

from mmdialog.encoders import ViTEncoder
from mmdialog.errors import MMDialogError
from mmdialog.registry import ENCODERS


def make_vit() -> ViTEncoder:
    torch.manual_seed(0)
    return ViTEncoder(image_size=16, patch_size=4, dim=32, depth=2, heads=4, mlp_ratio=2.0).eval()


def test_one_token_per_patch():
    assert ENCODERS.get("vit") is ViTEncoder
    vit = make_vit()
    assert vit.num_tokens == 16 and vit.dim == 32
    out = vit(torch.rand(3, 3, 16, 16) * 2 - 1)
    assert out.shape == (3, 16, 32)
    assert torch.isfinite(out).all()


def test_patches_see_each_other():
    vit = make_vit()
    x = torch.rand(1, 3, 16, 16)
    x2 = x.clone()
    x2[..., 12:, 12:] = -1.0  # only the last patch changes
    a, b = vit(x), vit(x2)
    assert not torch.allclose(a[:, 0], b[:, 0])  # bidirectional: the first token notices


def test_images_are_encoded_independently():
    vit = make_vit()
    x = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(vit(x)[1:], vit(x[1:]), atol=1e-5, rtol=1e-5)


def test_wrong_input_size_names_the_numbers():
    vit = make_vit()
    with pytest.raises(MMDialogError, match=r"\(N, 3, 16, 16\).*\(2, 3, 32, 32\)"):
        vit(torch.rand(2, 3, 32, 32))
    with pytest.raises(MMDialogError, match="image size 18.*patch size 4"):
        ViTEncoder(image_size=18, patch_size=4, dim=32, depth=1, heads=4, mlp_ratio=2.0)
