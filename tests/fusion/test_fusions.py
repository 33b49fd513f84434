"""Every fusion on a tiny model: token counts, cached decoding equal to re-encoding, a few training steps,
and what each one promises (closed gates, inspectable weights, a fixed token count, causality)."""

import pytest
import torch

from mmdialog.config import DecoderConfig, FusionConfig, ImageEncoderConfig, ModelConfig
from mmdialog.errors import MMDialogError
from mmdialog.fusion import CrossAttentionFusion, DynamicFusion
from mmdialog.fusion.common import Fusion
from mmdialog.model import MultimodalLM, build_model
from mmdialog.modules import KVCache
from mmdialog.registry import FUSIONS

V, IMG = 64, 3
FUSIONS_CFG = {
    "concat": FusionConfig(name="concat"),
    "cross_attention": FusionConfig(name="cross_attention", heads=2, every=1, gate_init=0.5),
    "interactive": FusionConfig(name="interactive", heads=2, layers=2, gate_init=0.5),
    "hierarchical": FusionConfig(name="hierarchical", levels=(0, -1)),
    "dynamic": FusionConfig(name="dynamic", levels=(0, 1, -1)),
    "resampler": FusionConfig(name="resampler", heads=2, layers=1, num_queries=2),
}
GATED = ("cross_attention", "interactive", "dynamic")  # the fusions with gates or mixing weights
SLOTS = {"concat": 4, "cross_attention": 1, "interactive": 4, "hierarchical": 4, "dynamic": 4, "resampler": 2}


def make(name: str, decoder: DecoderConfig | None = None):
    torch.manual_seed(0)
    cfg = ModelConfig(image=ImageEncoderConfig(image_size=16, patch_size=8, dim=24, depth=2, heads=2, mlp_ratio=2.0),
                      fusion=FUSIONS_CFG[name],
                      decoder=decoder or DecoderConfig(dim=32, depth=2, heads=4, kv_heads=2, max_seq_len=128,
                                                        tie_embeddings=False))
    return build_model(cfg, vocab_size=V, placeholder_ids={"image": IMG, "audio": 62, "video": 63}).eval()


def prompt(model, images: int = 2):
    """One row: text, an image, text, another image, text."""
    s = [IMG] * model.num_media_tokens("image")
    return torch.tensor([[6, 7] + s + [9, 11, 12] + (s + [13, 14] if images > 1 else [])])


def randomise(model):
    with torch.no_grad():  # at init greedy decoding repeats one token
        for p in model.decoder.parameters():
            p.normal_(0.0, 0.3)
        model.decoder.lm_head.weight[[IMG, 62, 63]] = 0.0  # greedy decoding should not write placeholders


def test_all_fusions_are_registered():
    assert set(FUSIONS_CFG) <= set(FUSIONS.names())


@pytest.mark.parametrize("name", sorted(FUSIONS_CFG))
def test_every_fusion_subclasses_the_protocol_and_declares_what_it_does(name):
    model = make(name)
    fusion = model.fusion
    assert isinstance(fusion, Fusion)
    hooks = type(fusion).decoder_hook is not Fusion.decoder_hook
    # a decoder hook or a cache-keeping forward attends across positions: the fusion must say so
    assert fusion.mixes_positions == (hooks or fusion.uses_cache) == (name in ("cross_attention", "interactive"))
    assert (fusion.levels is not None) == (name in ("hierarchical", "dynamic"))
    assert fusion.media_slots("image", 4) == SLOTS[name]
    if not hooks:
        assert fusion.decoder_hook(prompt(model), {}, model.placeholder_ids) is None
    assert fusion.explain_values() is None  # nothing to show before a forward pass
    model(prompt(model), images=torch.rand(2, 3, 16, 16))
    values = fusion.explain_values()
    if name in GATED:  # the gated fusions show their gates to `mmdialog explain`, one row per example
        assert values and all(v.shape[0] == 1 for v in values.values())
    else:
        assert values is None


def test_a_fusion_outside_the_protocol_is_refused():
    model = make("concat")
    with pytest.raises(MMDialogError, match="must subclass mmdialog.fusion.common.Fusion"):
        MultimodalLM(encoders=dict(model.encoders), fusion=torch.nn.Identity(), decoder=model.decoder,
                     placeholder_ids=model.placeholder_ids)


@pytest.mark.parametrize("name", sorted(FUSIONS_CFG))
def test_token_count_and_cached_decoding_equals_reencoding(name):
    model = make(name)
    randomise(model)
    assert model.num_media_tokens("image") == SLOTS[name]
    ids = prompt(model)
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    media = model.encode_media(images=images)
    seq = ids
    for _ in range(10):  # reference: the whole sequence again for every token
        logits = model(seq, media_embeds=media).logits
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    expected = seq[0, ids.shape[1]:].tolist()
    cache = KVCache()
    assert model.generate(ids, images, max_new_tokens=10, eos_id=-1, cache=cache) == expected
    assert cache.seq_len == ids.shape[1] + 9

    # the prompt fed in two pieces (a chat turn each), the second image with the second piece
    cut = ids.shape[1] - 2 - model.num_media_tokens("image")
    cache = KVCache()
    first = model.hidden(ids[:, :cut], {"image": media["image"][:1]}, cache=cache)
    second = model.hidden(ids[:, cut:], {"image": media["image"][1:]}, cache=cache)
    full = model.hidden(ids, media)
    torch.testing.assert_close(torch.cat([first, second], 1), full, atol=1e-5, rtol=1e-4)
    # cropping the cache (undo) crops the fusion's memory too
    cache.crop(cut)
    again = model.hidden(ids[:, cut:], {"image": media["image"][1:]}, cache=cache)
    torch.testing.assert_close(again, second, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(FUSIONS_CFG))
def test_a_few_training_steps_lower_the_loss_and_reach_the_encoder(name):
    model = make(name).train()
    g = torch.Generator().manual_seed(1)
    s = [IMG] * model.num_media_tokens("image")
    rows = [[5] + s + [8, 9, 10, 11, 12, 13], [6] + s + [14, 15, 16, 17, 18, 19]]
    ids = torch.tensor(rows * 2)
    labels = ids.clone()
    labels[:, : len(s) + 1] = -100
    images = torch.rand(4, 3, 16, 16, generator=g) * 2 - 1
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for step in range(8):
        loss = model(ids, labels=labels, images=images).loss
        opt.zero_grad()
        loss.backward()
        if step == 0:
            enc = model.get_parameter("encoders.image.patch_embed.weight").grad
            fus = [p.grad for p in model.fusion.parameters() if p.grad is not None]
            # closed gates keep gradients from the encoder at first; their own gradient opens them
            assert fus and (enc is not None or name == "cross_attention")
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.5, losses


def test_cross_attention_gates_start_closed_and_leave_the_decoder_unchanged():
    torch.manual_seed(0)
    cfg = FUSIONS_CFG["cross_attention"]
    FUSIONS_CFG["cross_attention"] = FusionConfig(name="cross_attention", heads=2, every=2)
    try:
        model = make("cross_attention")
    finally:
        FUSIONS_CFG["cross_attention"] = cfg
    assert isinstance(model.fusion, CrossAttentionFusion)
    assert len(model.fusion.blocks) == 1 and model.fusion.gates() == [(0.0, 0.0)]  # every=2: before layer 0 only
    ids = prompt(model)
    out = model(ids, images=torch.rand(2, 3, 16, 16)).logits
    plain = model.decoder.logits(model.decoder(model.decoder.embed(ids)))
    torch.testing.assert_close(out, plain)


def test_cross_attention_text_sees_only_earlier_media():
    model = make("cross_attention")
    ids = prompt(model)  # the second image's placeholder is at position 7
    a, b = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    b[0] = a[0]  # same first image, different second
    ha, hb = model.hidden(ids, model.encode_media(images=a)), model.hidden(ids, model.encode_media(images=b))
    pos = (ids[0] == IMG).nonzero()[1, 0]
    torch.testing.assert_close(ha[:, :pos], hb[:, :pos])
    assert not torch.allclose(ha[:, pos:], hb[:, pos:])


def test_interactive_text_before_media_is_untouched_and_media_see_earlier_text():
    model = make("interactive")
    ids = prompt(model, images=1)
    images = torch.rand(1, 3, 16, 16)
    out = model.embed(ids, model.encode_media(images=images))
    plain = model.decoder.embed(ids)
    torch.testing.assert_close(out[:, :2], plain[:, :2])  # nothing before the image changes
    assert not torch.allclose(out[:, -3:], plain[:, -3:])  # the text after it attended to it
    ids2 = ids.clone()
    ids2[0, 0] = 20  # other text before the image: its media tokens change
    out2 = model.embed(ids2, model.encode_media(images=images))
    slots = ids[0] == IMG
    assert not torch.allclose(out[0, slots], out2[0, slots])


def test_dynamic_gate_weights_are_exposed_per_item_and_per_example():
    model = make("dynamic")
    assert isinstance(model.fusion, DynamicFusion)
    s = [IMG] * 4
    ids = torch.tensor([[5] + s + s + [6], [7, 8, 9] + s + [10, 11, 12]])  # two images in row 0, one in row 1
    model(ids, images=torch.rand(3, 3, 16, 16))
    w = model.fusion.gate_weights()
    items = w["items"]["image"]
    assert items["levels"].shape == (3, 3) and items["modality"].shape == (3,)
    torch.testing.assert_close(items["levels"].sum(-1), torch.ones(3))
    torch.testing.assert_close(items["levels"], torch.full((3, 3), 1 / 3))  # the gate starts uniform
    assert items["rows"].tolist() == [0, 0, 1]
    assert w["modalities"] == ["image"] and w["examples"]["modality"].shape == (2, 1)
    torch.testing.assert_close(w["examples"]["modality"], torch.ones(2, 1))
    with torch.no_grad():  # a trained gate differs per input
        model.fusion.gate["image"][-1].weight.normal_()
    model(ids, images=torch.rand(3, 3, 16, 16))
    lv = model.fusion.gate_weights()["items"]["image"]["levels"]
    assert not torch.allclose(lv[0], lv[2])


def test_resampler_keeps_the_token_count_whatever_the_encoder_gives():
    model = make("resampler")
    assert model.encoders["image"].num_tokens == 4 and model.num_media_tokens("image") == 2
    out = model(prompt(model), images=torch.rand(2, 3, 16, 16)).logits
    assert out.shape == (1, prompt(model).shape[1], V)


@pytest.mark.parametrize("name", sorted(FUSIONS_CFG))
def test_placeholder_mismatch_names_both_numbers(name):
    model = make(name)
    ids = prompt(model)
    with pytest.raises(MMDialogError, match=r"<image> placeholder tokens but 1 image inputs"):
        model(ids, images=torch.rand(1, 3, 16, 16))


def test_a_field_the_fusion_does_not_use_is_an_error():
    cfg = ModelConfig(image=ImageEncoderConfig(image_size=16, patch_size=8, dim=24, depth=1, heads=2),
                      fusion=FusionConfig(name="concat", num_queries=3), decoder=DecoderConfig(dim=32, depth=1, heads=2))
    with pytest.raises(MMDialogError, match="model.fusion.num_queries is set but fusion 'concat' does not use it"):
        build_model(cfg, vocab_size=V, placeholder_ids={"image": IMG})
    cfg.fusion = FusionConfig(name="hierarchical", levels=(0, 5))
    with pytest.raises(MMDialogError, match="levels asks for level 5 but the vit encoder has levels 0..1"):
        build_model(cfg, vocab_size=V, placeholder_ids={"image": IMG}).encode_media(images=torch.rand(1, 3, 16, 16))


def test_gated_fusions_explain_values_are_their_gates_per_example():
    tanh = float(torch.tanh(torch.tensor(0.3)))
    for name in GATED:
        model = make(name)
        s = [IMG] * model.num_media_tokens("image")
        rows = torch.tensor([[6, 7] + s + [9, 11, 12] + s + [13, 14], [6, 7] + s + [9] * (len(s) + 5)])  # 2 + 1 images
        with torch.no_grad():  # the tanh gates away from their start value
            for p_name, p in model.fusion.named_parameters():
                if p_name.endswith("_gate"):
                    p.fill_(0.3)
        model(rows, images=torch.rand(3, 3, 16, 16))
        values = model.fusion.explain_values()
        if name == "dynamic":
            ex = model.fusion.gate_weights()["examples"]
            assert values["level weights"].shape == (2, 1, 3)  # two examples, one modality, three levels
            assert torch.equal(values["modality weight"], ex["modality"]) and torch.equal(values["level weights"],
                                                                                        ex["levels"])
            continue
        (g,) = values.values()
        # cross_attention: (examples, blocks, attention and MLP gate); interactive: (examples, co-attention layers)
        assert g.shape == ((2, len(model.fusion.blocks), 2) if name == "cross_attention" else (2, 2))
        torch.testing.assert_close(g, torch.full_like(g, tanh))
