import pytest
import torch

from mmdialog.modules import KVCache


def kv(t: int, fill: float, dtype=torch.float32):
    return torch.full((2, 1, t, 4), fill, dtype=dtype), torch.full((2, 1, t, 4), -fill, dtype=dtype)


def test_update_appends_per_layer_and_returns_everything():
    cache = KVCache()
    assert cache.seq_len == 0 and cache.nbytes == 0
    for layer in range(2):
        cache.update(layer, *kv(3, 1.0))
    k, v = cache.update(0, *kv(2, 2.0))
    assert k.shape == (2, 1, 5, 4) and cache.seq_len == 5
    assert k[:, :, :3].eq(1).all() and k[:, :, 3:].eq(2).all() and v[:, :, 3:].eq(-2).all()
    assert cache.keys[1].shape[2] == 3  # the other layer is untouched
    with pytest.raises(ValueError, match="layer 5"):
        cache.update(5, *kv(1, 0.0))


def test_crop_keeps_the_first_positions():
    cache = KVCache()
    cache.update(0, *kv(3, 1.0))
    cache.update(0, *kv(4, 2.0))
    cache.crop(3)
    assert cache.seq_len == 3 and cache.keys[0].eq(1).all()
    with pytest.raises(ValueError, match="3 positions to 4"):
        cache.crop(4)


def test_clone_is_independent():
    cache = KVCache()
    cache.update(0, *kv(3, 1.0))
    copy = cache.clone()
    copy.update(0, *kv(2, 2.0))
    copy.keys[0][0, 0, 0, 0] = 99.0
    assert cache.seq_len == 3 and copy.seq_len == 5
    assert cache.keys[0].eq(1).all()


def test_stores_the_incoming_dtype_and_counts_bytes():
    cache = KVCache()
    cache.update(0, *kv(3, 1.0, torch.bfloat16))
    cache.update(0, *kv(1, 1.0, torch.bfloat16))
    assert cache.keys[0].dtype == torch.bfloat16
    assert cache.nbytes == 2 * (2 * 1 * 4 * 4) * 2  # k and v, (B, H, T, hs), 2 bytes each
