import math

import pytest
import torch

from mmdialog.errors import MMDialogError
from mmdialog.modules import Attention, KVCache, RotaryEmbedding, causal_mask


def reference(attn: Attention, x: torch.Tensor, causal: bool) -> torch.Tensor:
    """Plain softmax attention with kv heads repeated explicitly."""
    B, T, C = x.shape
    nh, nkv, hs = attn.heads, attn.kv_heads, attn.head_dim
    q, k, v = attn.qkv(x).split([nh * hs, nkv * hs, nkv * hs], dim=-1)
    q = q.view(B, T, nh, hs).transpose(1, 2)
    k = k.view(B, T, nkv, hs).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
    v = v.view(B, T, nkv, hs).transpose(1, 2).repeat_interleave(nh // nkv, dim=1)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hs)
    if causal:
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    y = scores.softmax(-1) @ v
    return attn.out_proj(y.transpose(1, 2).reshape(B, T, C))


@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("causal", [True, False])
def test_matches_reference_softmax_attention(kv_heads, causal):
    torch.manual_seed(0)
    attn = Attention(dim=32, heads=4, kv_heads=kv_heads, causal=causal)
    x = torch.randn(2, 7, 32)
    torch.testing.assert_close(attn(x), reference(attn, x, causal), atol=1e-5, rtol=1e-5)


def test_grouped_query_shrinks_the_kv_projection():
    full = Attention(dim=32, heads=4, causal=True)
    grouped = Attention(dim=32, heads=4, kv_heads=1, causal=True)
    assert full.qkv.out_features == 3 * 32
    assert grouped.qkv.out_features == 32 + 2 * 8


def test_causal_ignores_the_future_and_bidirectional_does_not():
    torch.manual_seed(0)
    x = torch.randn(1, 6, 32)
    x2 = x.clone()
    x2[:, -1] += 1.0
    causal = Attention(dim=32, heads=4, causal=True)
    torch.testing.assert_close(causal(x)[:, :-1], causal(x2)[:, :-1])
    bidir = Attention(dim=32, heads=4, causal=False)
    assert not torch.allclose(bidir(x)[:, 0], bidir(x2)[:, 0])


def test_explicit_mask_equals_the_causal_fast_path():
    torch.manual_seed(0)
    attn = Attention(dim=32, heads=4, causal=True, rope=RotaryEmbedding(head_dim=8))
    x, pos = torch.randn(2, 5, 32), torch.arange(5)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()[None, None]  # (1, 1, T, S)
    torch.testing.assert_close(attn(x, positions=pos, mask=mask), attn(x, positions=pos))


def test_several_queries_over_a_cache_need_a_mask():
    attn = Attention(dim=32, heads=4, causal=True)
    cache = KVCache()
    attn(torch.randn(1, 3, 32), cache=cache)
    with pytest.raises(ValueError, match="2 queries over 5 keys"):
        attn(torch.randn(1, 2, 32), cache=cache)


def test_bad_head_counts_name_the_numbers():
    with pytest.raises(MMDialogError, match="30.*4 heads"):
        Attention(dim=30, heads=4, causal=True)
    with pytest.raises(MMDialogError, match="4 query heads.*3 kv heads"):
        Attention(dim=32, heads=4, kv_heads=3, causal=True)


def test_causal_mask_after_a_cache_hides_the_future_and_padding():
    plain = causal_mask(past=3, q_len=2)
    assert plain.shape == (1, 1, 2, 5)
    assert plain[0, 0].tolist() == [[True, True, True, True, False], [True, True, True, True, True]]
    padding = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 0]])  # row 1: left pads, then a pad query
    padded = causal_mask(past=3, q_len=2, padding_mask=padding)
    assert padded.shape == (2, 1, 2, 5)
    assert padded[0].equal(plain[0])
    assert padded[1, 0].tolist() == [[False, False, True, True, False], [False, False, True, True, True]]


def test_causal_mask_never_leaves_a_query_without_keys():
    padding = torch.tensor([[0, 0, 1, 1], [0, 0, 0, 0]])  # left padding; an empty row
    mask = causal_mask(past=0, q_len=4, padding_mask=padding)
    assert mask.any(dim=-1).all()
    assert mask[1, 0].equal(torch.eye(4, dtype=torch.bool))  # pads see only themselves
    assert mask[0, 0, 3].tolist() == [False, False, True, True]  # real tokens never see pads


def test_qk_norm_bounds_the_logits_whatever_the_query_and_key_weights_grow_to():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 32)
    for qk_norm in (True, False):
        attn = Attention(dim=32, heads=4, causal=True, rope=RotaryEmbedding(head_dim=8), qk_norm=qk_norm)
        before = attn(x, positions=torch.arange(6))
        with torch.no_grad():
            attn.qkv.weight[:64] *= 10.0  # the query and key rows of the fused projection
        after = attn(x, positions=torch.arange(6))
        assert torch.allclose(before, after, atol=1e-4) == qk_norm


def test_qk_norm_with_a_cache_equals_the_whole_sequence():
    torch.manual_seed(0)
    attn = Attention(dim=32, heads=4, kv_heads=2, causal=True, rope=RotaryEmbedding(head_dim=8), qk_norm=True)
    x = torch.randn(1, 5, 32)
    cache = KVCache()
    first = attn(x[:, :3], positions=torch.arange(3), cache=cache)
    last = attn(x[:, 3:], positions=torch.arange(3, 5), cache=cache, mask=causal_mask(past=3, q_len=2))
    torch.testing.assert_close(torch.cat([first, last], 1), attn(x, positions=torch.arange(5)), atol=1e-5, rtol=1e-5)
