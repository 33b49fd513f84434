import pytest
import torch

from mmdialog.decoders import CausalDecoder
from mmdialog.errors import MMDialogError
from mmdialog.modules import KVCache
from mmdialog.registry import DECODERS

V = 64


def make_decoder(**overrides) -> CausalDecoder:
    torch.manual_seed(0)
    sizes = dict(vocab_size=V, dim=32, depth=2, heads=4, kv_heads=2, mlp_hidden=0, max_seq_len=128,
                 rope_theta=10000.0, norm_eps=1e-5, dropout=0.0, tie_embeddings=True)
    return CausalDecoder(**{**sizes, **overrides}).eval()


def sharpen(dec: CausalDecoder) -> CausalDecoder:
    """Larger random weights: at init (std 0.02) greedy decoding repeats one token and proves little."""
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0.0, 0.3)
    return dec


def full_logits(dec, ids, **kw):
    return dec.logits(dec(dec.embed(ids), **kw))


def test_registered_and_defaults_resolved():
    assert DECODERS.get("causal") is CausalDecoder
    dec = make_decoder(kv_heads=0)
    assert dec.blocks[0].mlp.gate.out_features == 96  # 8/3 * 32 = 85.3, up to a multiple of 32
    assert dec.blocks[0].attn.kv_heads == 4
    assert dec.lm_head.weight is dec.tok_embeddings.weight
    assert make_decoder(tie_embeddings=False).lm_head.weight is not make_decoder().tok_embeddings.weight


def test_init_schemes_and_smaller_residual_projections():
    dec = make_decoder(dim=64, depth=8, heads=4)  # fan_in: std 1/sqrt(fan in), output projections / sqrt(2 depth)
    hidden = dec.blocks[3].mlp.out_proj.in_features
    assert abs(dec.blocks[3].attn.qkv.weight.std().item() - 64 ** -0.5) < 0.005
    assert abs(dec.tok_embeddings.weight.std().item() - 64 ** -0.5) < 0.005
    assert abs(dec.blocks[3].attn.out_proj.weight.std().item() - 64 ** -0.5 / 4) < 0.002
    assert abs(dec.blocks[3].mlp.out_proj.weight.std().item() - hidden ** -0.5 / 4) < 0.002
    gpt2 = make_decoder(dim=64, depth=8, heads=4, init="gpt2")
    assert abs(gpt2.blocks[3].attn.out_proj.weight.std().item() - 0.02 / 4) < 0.001
    assert abs(gpt2.blocks[3].mlp.out_proj.weight.std().item() - 0.02 / 4) < 0.001
    assert abs(gpt2.blocks[3].attn.qkv.weight.std().item() - 0.02) < 0.002
    with pytest.raises(MMDialogError, match="model.decoder.init must be fan_in or gpt2"):
        make_decoder(init="xavier")


@torch.no_grad()
def test_cached_greedy_decoding_equals_uncached():
    dec = sharpen(make_decoder())
    ids = torch.randint(0, V, (1, 6))
    uncached = ids
    for _ in range(24):
        nxt = full_logits(dec, uncached)[:, -1].argmax(-1, keepdim=True)
        uncached = torch.cat([uncached, nxt], dim=1)

    cache = KVCache()
    hidden = dec(dec.embed(ids), cache=cache)
    cached = ids
    for _ in range(24):
        nxt = dec.logits(hidden[:, -1]).argmax(-1, keepdim=True)  # (1, 1)
        cached = torch.cat([cached, nxt], dim=1)
        hidden = dec(dec.embed(nxt), cache=cache)
    assert cached.tolist() == uncached.tolist()
    assert len(set(cached[0, 6:].tolist())) > 3  # it decodes a sequence, not one repeated token
    assert cache.seq_len == 6 + 24


@torch.no_grad()
def test_prefill_in_chunks_equals_one_pass():
    dec = sharpen(make_decoder())
    ids = torch.randint(0, V, (2, 17))
    cache = KVCache()
    chunks = [full_logits(dec, ids[:, a:b], cache=cache) for a, b in [(0, 5), (5, 6), (6, 13), (13, 17)]]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full_logits(dec, ids), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_crop_then_refeed_equals_a_fresh_pass():
    dec = sharpen(make_decoder())
    ids = torch.randint(0, V, (1, 12))
    cache = KVCache()
    full_logits(dec, ids[:, :8], cache=cache)
    full_logits(dec, torch.randint(0, V, (1, 5)), cache=cache)  # a reply to roll back
    cache.crop(8)
    refed = full_logits(dec, ids[:, 8:], cache=cache)
    torch.testing.assert_close(refed, full_logits(dec, ids)[:, 8:], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_right_padded_row_equals_the_row_alone():
    dec = sharpen(make_decoder())
    long, short = torch.randint(1, V, (1, 10)), torch.randint(1, V, (1, 6))
    batch = torch.cat([long, torch.cat([short, torch.zeros(1, 4, dtype=torch.long)], dim=1)])  # (2, 10)
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0
    out = full_logits(dec, batch, attention_mask=mask)
    torch.testing.assert_close(out[1, :6], full_logits(dec, short)[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[0], full_logits(dec, long)[0], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(out).all()


@torch.no_grad()
def test_left_padded_prompt_decodes_like_the_prompt_alone():
    dec = sharpen(make_decoder())
    prompt = torch.randint(1, V, (1, 5))
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), prompt], dim=1)  # (1, 8)
    mask = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1]])
    cache = KVCache()
    out = full_logits(dec, padded, attention_mask=mask, cache=cache)
    assert torch.isfinite(out).all()  # pad queries see no real key; they must still not give NaN
    # RoPE scores depend on distances only, so shifted positions change nothing but rounding
    torch.testing.assert_close(out[:, 3:], full_logits(dec, prompt), atol=1e-4, rtol=1e-4)
    nxt = torch.randint(1, V, (1, 1))
    step = full_logits(dec, nxt, attention_mask=torch.cat([mask, torch.ones(1, 1, dtype=torch.long)], dim=1),
                       cache=cache)
    torch.testing.assert_close(step[:, -1], full_logits(dec, torch.cat([prompt, nxt], 1))[:, -1], atol=1e-4, rtol=1e-4)


@torch.no_grad()
def test_all_real_mask_equals_no_mask_and_empty_row_stays_finite():
    dec = sharpen(make_decoder())
    ids = torch.randint(0, V, (2, 7))
    ones = torch.ones(2, 7, dtype=torch.long)
    torch.testing.assert_close(full_logits(dec, ids, attention_mask=ones), full_logits(dec, ids))
    empty = ones.clone()
    empty[1] = 0
    assert torch.isfinite(full_logits(dec, ids, attention_mask=empty)).all()


def test_length_and_mask_shape_errors_name_the_numbers():
    dec = make_decoder(max_seq_len=16)
    cache = KVCache()
    dec(dec.embed(torch.zeros(1, 10, dtype=torch.long)), cache=cache)
    with pytest.raises(MMDialogError, match="10 cached \\+ 7 new.*16"):
        dec(dec.embed(torch.zeros(1, 7, dtype=torch.long)), cache=cache)
    with pytest.raises(MMDialogError, match="\\(1, 12\\)"):
        dec(dec.embed(torch.zeros(1, 2, dtype=torch.long)), cache=cache, attention_mask=torch.ones(1, 2))
