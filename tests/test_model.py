import pytest
import torch
import torch.nn.functional as F

from mmdialog.config import DecoderConfig, ImageEncoderConfig, ModelConfig
from mmdialog.errors import MMDialogError
from mmdialog.model import MultimodalLM, build_model, count_parameters
from mmdialog.modules import KVCache

V, IMG, EOS = 64, 3, 2
TINY = ModelConfig(
    image=ImageEncoderConfig(image_size=16, patch_size=8, dim=24, depth=1, heads=2, mlp_ratio=2.0),
    decoder=DecoderConfig(dim=32, depth=2, heads=4, kv_heads=2, max_seq_len=128),
)


def make_model() -> MultimodalLM:
    torch.manual_seed(0)
    return build_model(TINY, vocab_size=V, placeholder_ids={"image": IMG}).eval()


def batch():
    """Two rows, three images of 4 tokens each; the second row right-padded."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(4, V, (2, 16), generator=g)
    ids[0, 1:5] = IMG
    ids[1, 0:4] = IMG
    ids[1, 6:10] = IMG
    mask = torch.ones(2, 16, dtype=torch.long)
    mask[1, 13:] = 0
    ids[1, 13:] = 0
    labels = ids.clone()
    labels[:, :10] = -100  # only the "reply" is supervised
    labels[mask == 0] = -100
    images = torch.rand(3, 3, 16, 16, generator=g) * 2 - 1
    return dict(input_ids=ids, attention_mask=mask, labels=labels, images=images)


def test_build_model_wires_the_config():
    model = make_model()
    assert model.num_media_tokens("image") == 4
    assert model.decoder.lm_head.out_features == V
    assert model.fusion.projectors["image"][0].in_features == 24
    tied = count_parameters(model)
    untied = count_parameters(build_model(ModelConfig(image=TINY.image, decoder=DecoderConfig(
        dim=32, depth=2, heads=4, kv_heads=2, max_seq_len=128, tie_embeddings=False)), vocab_size=V,
        placeholder_ids={"image": IMG}))
    assert untied - tied == V * 32  # the tied lm head is counted once
    with pytest.raises(MMDialogError, match="'audio'"):
        model.num_media_tokens("audio")
    with pytest.raises(MMDialogError, match="no placeholder token id for \\['image'\\]"):
        build_model(TINY, vocab_size=V, placeholder_ids={})
    small = ModelConfig(image=TINY.image, decoder=DecoderConfig(vocab_size=10))
    with pytest.raises(MMDialogError, match="vocab_size=10.*64"):
        build_model(small, vocab_size=V, placeholder_ids={"image": IMG})


def test_loss_equals_full_logits_cross_entropy():
    model = make_model()
    b = batch()
    out = model(**b)
    assert out.logits is None  # with labels, full logits only on request
    full = model(**{**b, "labels": None}).logits  # (B, T, V)
    expected = F.cross_entropy(full[:, :-1].reshape(-1, V), b["labels"][:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected, atol=1e-5, rtol=1e-5)
    assert out.num_target_tokens == int((b["labels"][:, 1:] != -100).sum()) == 6 + 3
    both = model(**b, return_logits=True)
    torch.testing.assert_close(both.loss, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both.logits, full)


def test_gradient_reaches_the_image_encoder():
    model = make_model().train()
    model(**batch()).loss.backward()
    for name in ("encoders.image.patch_embed.weight", "encoders.image.blocks.0.attn.qkv.weight",
                 "fusion.projectors.image.0.weight", "decoder.blocks.0.attn.qkv.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_precomputed_media_equal_images_and_not_both():
    model = make_model()
    b = batch()
    media = model.encode_media(images=b["images"])
    assert media["image"].shape == (3, 4, 24)
    via_media = model(**{**b, "images": None}, media_embeds=media)
    torch.testing.assert_close(via_media.loss, model(**b).loss)
    with pytest.raises(MMDialogError, match="not both"):
        model(**b, media_embeds=media)


def test_placeholder_mismatch_is_reported():
    model = make_model()
    b = batch()
    with pytest.raises(MMDialogError, match="12 <image> placeholder tokens but 2 image inputs give 2x4=8"):
        model(**{**b, "images": b["images"][:2]})


def test_generate_equals_uncached_greedy_and_leaves_the_cache_consistent():
    model = make_model()
    with torch.no_grad():
        for p in model.parameters():  # at init greedy decoding repeats one token
            p.normal_(0.0, 0.3)
    ids = torch.tensor([[5, IMG, IMG, IMG, IMG, 9, 11]])
    image = torch.rand(1, 3, 16, 16)
    media = model.encode_media(images=image)
    seq = ids
    for _ in range(22):
        logits = model(seq, media_embeds=media).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    expected = seq[0, ids.shape[1]:].tolist()
    assert len(set(expected)) > 2  # not one repeated token

    cache = KVCache()
    assert model.generate(ids, image, max_new_tokens=22, eos_id=-1, cache=cache) == expected
    assert cache.seq_len == ids.shape[1] + 22 - 1  # the last token was returned, never fed

    stop = expected[5]
    assert model.generate(ids, image, max_new_tokens=22, eos_id=stop) == expected[:expected.index(stop) + 1]
    with pytest.raises(MMDialogError, match="one prompt"):
        model.generate(ids.repeat(2, 1), image.repeat(2, 1, 1, 1), max_new_tokens=1, eos_id=EOS)


def test_bf16_autocast_forward_and_backward():
    model = make_model().train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(**batch())
        assert out.loss.dtype == torch.float32
    out.loss.backward()
    assert torch.isfinite(out.loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.get_parameter("encoders.image.patch_embed.weight").grad.abs().sum() > 0


@torch.no_grad()
def test_bf16_autocast_cached_decoding_runs():
    model = make_model()
    ids = torch.tensor([[5, IMG, IMG, IMG, IMG, 9, 11]])
    cache = KVCache()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = model.generate(ids, torch.rand(1, 3, 16, 16), max_new_tokens=5, eos_id=-1, cache=cache)
    assert len(tokens) == 5 and all(0 <= t < V for t in tokens)
    assert cache.keys[0].dtype == torch.bfloat16 and cache.seq_len == ids.shape[1] + 4
