import pytest
import torch

from mmdialog.errors import MMDialogError
from mmdialog.fusion import ConcatFusion
from mmdialog.registry import FUSIONS

IMG = 7  # placeholder token id


def setup():
    torch.manual_seed(0)
    fusion = ConcatFusion(in_dims={"image": 12}, out_dim=16)
    ids = torch.tensor([[1, IMG, IMG, 2, 3, 4],
                        [IMG, IMG, 5, IMG, IMG, 6]])  # three images of 2 tokens, in order of appearance
    embeds = torch.randn(2, 6, 16)
    feats = torch.randn(3, 2, 12)  # (N, T_img, d_img)
    return fusion, ids, embeds, feats


def test_projected_features_land_exactly_on_placeholders():
    assert FUSIONS.get("concat") is ConcatFusion
    fusion, ids, embeds, feats = setup()
    out = fusion(embeds, ids, {"image": feats}, {"image": IMG})
    proj = fusion.projectors["image"](feats)  # (3, 2, 16)
    torch.testing.assert_close(out[0, 1:3], proj[0])
    torch.testing.assert_close(out[1, 0:2], proj[1])
    torch.testing.assert_close(out[1, 3:5], proj[2])
    text = ids != IMG
    torch.testing.assert_close(out[text], embeds[text])


def test_count_mismatch_names_both_numbers():
    fusion, ids, embeds, feats = setup()
    with pytest.raises(MMDialogError, match=r"6 <image> placeholder tokens but 2 image inputs give 2x2=4 embeddings"):
        fusion(embeds, ids, {"image": feats[:2]}, {"image": IMG})
    with pytest.raises(MMDialogError, match=r"6 <image> placeholder tokens but no image inputs give 0 embeddings"):
        fusion(embeds, ids, {}, {"image": IMG})
    with pytest.raises(MMDialogError, match="audio"):
        fusion(embeds, ids, {"image": feats, "audio": feats}, {"image": IMG})


def test_text_only_batch_passes_through():
    fusion, ids, embeds, _ = setup()
    ids = ids.masked_fill(ids == IMG, 0)
    assert fusion(embeds, ids, {}, {"image": IMG}) is embeds


def test_gradients_reach_features_but_not_overwritten_embeddings():
    fusion, ids, embeds, feats = setup()
    embeds.requires_grad_(True)
    feats.requires_grad_(True)
    fusion(embeds, ids, {"image": feats}, {"image": IMG}).square().sum().backward()
    assert feats.grad.abs().sum() > 0
    assert embeds.grad[ids == IMG].eq(0).all() and embeds.grad[ids != IMG].ne(0).all()


def test_keeps_the_embedding_dtype_under_autocast():
    fusion, ids, embeds, feats = setup()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fusion(embeds, ids, {"image": feats}, {"image": IMG})
    assert out.dtype == torch.float32
