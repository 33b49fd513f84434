import pytest
import torch
import torch.nn.functional as F

from mmdialog.config import DecoderConfig, ImageEncoderConfig, ModelConfig
from mmdialog.errors import MMDialogError
from mmdialog.model import MultimodalLM, build_model, count_parameters, decode
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


def test_weighted_loss_and_the_objective_are_the_forward_loss():
    """One loss path: loss_weights weigh each target in forward; NextTokenObjective returns forward's sums."""
    from mmdialog.objectives.lm import NextTokenObjective

    model = make_model()
    b = batch()
    weights = torch.rand(2, 16, generator=torch.Generator().manual_seed(2))
    weights[0, 12:] = 0  # a message with weight 0 is not a target at all
    out = model(**b, loss_weights=weights)
    full = model(**{**b, "labels": None}).logits[:, :-1]  # (B, T-1, V)
    ce = F.cross_entropy(full.reshape(-1, V), b["labels"][:, 1:].reshape(-1), ignore_index=-100,
                         reduction="none").view(2, 15)
    w = weights[:, 1:] * (b["labels"][:, 1:] != -100)
    torch.testing.assert_close(out.loss_sum, (ce * w).sum(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.target_weight, w.sum())
    torch.testing.assert_close(out.loss, (ce * w).sum() / w.sum(), atol=1e-5, rtol=1e-5)
    assert out.num_target_tokens == int((w > 0).sum()) == 6 - 4 + 3  # a target t weighs with its token t + 1
    loss_sum, weight = NextTokenObjective(model)({**b, "loss_weights": weights})
    assert torch.equal(loss_sum, out.loss_sum) and torch.equal(weight, out.target_weight)
    plain = model(**b)
    assert plain.target_weight.item() == plain.num_target_tokens
    none = model(**{**b, "labels": torch.full_like(b["labels"], -100)})
    assert none.loss.item() == 0.0 and none.target_weight.item() == 0
    with pytest.raises(MMDialogError, match="pass labels too"):
        model(**{**b, "labels": None}, loss_weights=weights)


def test_logits_to_keep_projects_only_the_last_positions():
    model = make_model()
    b = batch()
    full = model(**{**b, "labels": None}).logits  # (B, T, V)
    torch.testing.assert_close(model(**{**b, "labels": None}, logits_to_keep=1).logits, full[:, -1:])
    both = model(**b, return_logits=True, logits_to_keep=3)
    torch.testing.assert_close(both.logits, full[:, -3:])
    torch.testing.assert_close(both.loss, model(**b).loss)


def test_logits_at_projects_one_position_per_row():
    model = make_model()
    b = {**batch(), "labels": None}
    full = model(**b).logits  # (B, T, V)
    at = torch.tensor([15, 12])  # the second row's last real token
    torch.testing.assert_close(model(**b, logits_at=at).logits, torch.stack([full[0, 15:16], full[1, 12:13]]))
    with pytest.raises(MMDialogError, match="not both"):
        model(**b, logits_at=at, logits_to_keep=1)


def test_decode_stops_each_row_at_its_end_or_limit_and_feeds_only_rows_that_go_on():
    steps = iter([[5, 7, 6], [EOS, 8], [9]])
    fed = []

    def choose(logits, replies):
        assert len(replies) == logits.shape[0]
        return next(steps)

    def feed(rows, tokens):
        fed.append((rows, tokens))
        return torch.zeros(len(rows), V)

    got = list(decode(torch.zeros(3, V), choose, feed, max_new_tokens=[3, 3, 1], end_id=EOS))
    assert got == [[(0, 5), (1, 7), (2, 6)], [(0, EOS), (1, 8)], [(1, 9)]]
    assert fed == [([0, 1], [5, 7]), ([1], [8])]  # row 2 hit its limit, row 0 its end; row 1's last never fed
    lazy = decode(torch.zeros(1, V), lambda lg, r: [4], feed, max_new_tokens=5)
    fed.clear()
    assert next(lazy) == [(0, 4)] and fed == []  # fed only when the next step is asked for
    assert list(decode(torch.zeros(2, V), choose, feed, max_new_tokens=0)) == []


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


def test_generate_never_produces_a_placeholder_token():
    """A placeholder fed back would ask for a media item that is not there (the next forward fails)."""
    model = make_model()
    real = model.decoder.logits

    def favour_placeholder(h):
        out = real(h).clone()
        out[..., IMG] = 1e4
        return out

    model.decoder.logits = favour_placeholder
    ids = torch.tensor([[5, IMG, IMG, IMG, IMG, 9, 11]])
    tokens = model.generate(ids, torch.rand(1, 3, 16, 16), max_new_tokens=5, eos_id=-1)
    assert len(tokens) == 5 and IMG not in tokens


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


# -- several encoders: model.encoders, audio and video through processor, collator, model and chat ------------

import io  # noqa: E402
import wave  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image as PILImage  # noqa: E402

from mmdialog.config import load_config  # noqa: E402

AV = [
    "model.image.image_size=16", "model.image.patch_size=8", "model.image.dim=24", "model.image.depth=1",
    "model.image.heads=2", "model.decoder.dim=32", "model.decoder.depth=2", "model.decoder.heads=2",
    "model.decoder.max_seq_len=512",
    "model.encoders.audio={name: audio_cnn, sample_rate: 8000, clip_seconds: 0.5, n_mels: 16, n_fft: 256, "
    "hop_length: 80, dim: 24, widths: [8, 16]}",
    "model.encoders.video={name: video_tubelet, num_frames: 4, image_size: 16, tubelet: 2, patch_size: 8, dim: 24, "
    "depth: 1, heads: 2}",
]


def wav_bytes(seconds: float, rate: int, freq: float = 440.0) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def gif(path, frames: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ims = [PILImage.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(frames)]
    ims[0].save(path, save_all=True, append_images=ims[1:], duration=100)
    return str(path)


def av_model(tokenizer, *extra):
    from mmdialog.data.processor import Processor

    cfg = load_config(None, AV + list(extra))
    torch.manual_seed(0)
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids)).eval()
    return model, Processor.for_model(tokenizer, model, max_length=512)


def test_config_with_several_encoders_builds_each_modality(tokenizer):
    model, proc = av_model(tokenizer)
    assert sorted(model.encoders) == ["audio", "image", "video"]
    assert model.num_media_tokens("audio") == (4000 // 80) // 4 and model.num_media_tokens("video") == 2 * 2 * 2
    assert proc.media_tokens("audio") == model.num_media_tokens("audio") and proc.image_size == 16
    # every modality, the image too, sized from its encoder through the one transform table
    assert proc.image_tokens == proc.media_tokens("image") == model.num_media_tokens("image")
    assert {m: type(proc.media[m].transform).__name__ for m in proc.media} == {
        "image": "ImageTransform", "audio": "AudioTransform", "video": "VideoTransform"}
    assert (proc.media["image"].transform.image_size, proc.media["video"].transform.num_frames) == (16, 4)
    media = model.encode_media(images=torch.rand(1, 3, 16, 16), audios=torch.rand(2, 4000),
                               videos=torch.rand(1, 4, 3, 16, 16))
    assert media["audio"].shape == (2, 12, 24) and media["video"].shape == (1, 8, 24)


def test_model_encoders_config_errors_name_the_key():
    base = AV[:9]
    with pytest.raises(MMDialogError, match=r"unknown config key model\.encoders\.audio\.widht.*takes:.*widths"):
        build_model(load_config(None, base + ["model.encoders.audio={name: audio_cnn, widht: 3}"]).model,
                    vocab_size=V, placeholder_ids={"image": IMG, "audio": 4})
    with pytest.raises(MMDialogError, match="unknown encoder 'nope'; known:.*audio_cnn"):
        build_model(load_config(None, base + ["model.encoders.audio={name: nope}"]).model, vocab_size=V,
                    placeholder_ids={"image": IMG, "audio": 4})
    with pytest.raises(MMDialogError, match=r"model\.encoders\.audio\.dim' must be int"):
        build_model(load_config(None, base + ["model.encoders.audio={name: audio_cnn, dim: wide}"]).model,
                    vocab_size=V, placeholder_ids={"image": IMG, "audio": 4})
    with pytest.raises(MMDialogError, match="set twice, in model.image and model.encoders.image"):
        build_model(load_config(None, base + ["model.encoders.image={name: resnet, image_size: 16}"]).model,
                    vocab_size=V, placeholder_ids={"image": IMG})
    with pytest.raises(MMDialogError, match="model.encoders.text: media encoders exist for image, audio, video"):
        build_model(load_config(None, base + ["model.encoders.text={name: bert, vocab_size: 10}"]).model,
                    vocab_size=V, placeholder_ids={"image": IMG})
    with pytest.raises(MMDialogError, match="model.decoder.path is set but decoder 'causal' does not use it"):
        build_model(load_config(None, base + ["model.decoder.path=/x"]).model, vocab_size=V,
                    placeholder_ids={"image": IMG})


def test_image_encoder_from_model_encoders_replaces_model_image(tokenizer):
    cfg = load_config(None, ["model.encoders.image={name: resnet, image_size: 16, dim: 24, widths: [8, 16]}",
                             "model.decoder.dim=32", "model.decoder.depth=1", "model.decoder.heads=2"])
    model = build_model(cfg.model, vocab_size=tokenizer.vocab_size, placeholder_ids=dict(tokenizer.media_ids))
    assert type(model.encoders["image"]).__name__ == "ResNetEncoder" and model.num_media_tokens("image") == 16


def test_processor_and_collator_carry_audio_and_video(tokenizer, tmp_path):
    from mmdialog.data.collate import Collator
    from mmdialog.data.conversation import Audio, Conversation, Video

    model, proc = av_model(tokenizer)
    conv = Conversation().add("user", Audio(data=wav_bytes(0.3, 16000), format="wav"), "How many red things are there?")
    conv.add("assistant", "2").add("user", Video(path=gif(tmp_path / "a.gif", 6)), "What colour is it?")
    ex = proc(conv, add_generation_prompt=True)
    ids = ex.input_ids.tolist()
    assert ids.count(tokenizer.media_ids["audio"]) == 12 and ids.count(tokenizer.media_ids["video"]) == 8
    assert ex.audios.shape == (1, 4000) and ex.videos.shape == (1, 4, 3, 16, 16) and ex.images is None
    assert ex.audios[0, 2400:].abs().max() == 0  # resampled to 8 kHz: 0.3 s = 2400 samples, then silence
    other = proc(Conversation().add("user", Audio(data=wav_bytes(0.1, 8000))).add("assistant", "ok"))
    batch = Collator(tokenizer.pad_id)([ex, other])
    assert batch["audios"].shape == (2, 4000) and batch["videos"].shape == (1, 4, 3, 16, 16) and "images" not in batch
    out = model(**batch, return_logits=True)
    assert out.logits.shape[:2] == batch["input_ids"].shape


def test_bad_audio_and_video_are_named(tokenizer, tmp_path):
    from mmdialog.data.conversation import Audio, Conversation, Video

    _, proc = av_model(tokenizer)
    long = Conversation().add("user", Audio(path=str(tmp_path / "long.wav")), "hi")
    (tmp_path / "long.wav").write_bytes(wav_bytes(0.8, 8000))
    with pytest.raises(MMDialogError, match=r"long.wav lasts 0.80 s, longer than the audio encoder's 0.50 s"):
        proc(long)
    (tmp_path / "x.mp3").write_bytes(b"ID3not really")
    with pytest.raises(MMDialogError, match="x.mp3: cannot read the audio as PCM WAV"):
        proc(Conversation().add("user", Audio(path=str(tmp_path / "x.mp3"))))
    with pytest.raises(MMDialogError, match="short.gif has 2 frame.*fewer than the 4"):
        proc(Conversation().add("user", Video(path=gif(tmp_path / "short.gif", 2))))
    np.save(tmp_path / "bad.npy", np.zeros((4, 16, 16), dtype=np.uint8))
    with pytest.raises(MMDialogError, match=r"bad.npy holds uint8 \(4, 16, 16\), expected \(frames, H, W, 3\)"):
        proc(Conversation().add("user", Video(path=str(tmp_path / "bad.npy"))))
    with pytest.raises(MMDialogError, match=r"holds 0 <\|audio\|> placeholder\(s\) but 1 audio clip"):
        proc.expand(tokenizer.encode("<|user|>hi<|end|>"), {"audio": 1})


def test_resampling_keeps_the_pitch():
    from mmdialog.data.processor import resample

    rate = 44100
    t = torch.arange(rate // 2, dtype=torch.float64) / rate
    x = torch.sin(2 * torch.pi * 440 * t)
    y = resample(x, rate, 16000)
    assert y.shape == (8000,)
    peak = torch.fft.rfft(y).abs().argmax().item() * 16000 / y.shape[0]
    assert abs(peak - 440) <= 2


@pytest.mark.parametrize("fusion", [[], ["model.fusion.name=cross_attention", "model.fusion.heads=2",
                                         "model.fusion.gate_init=1.0"]], ids=["concat", "cross_attention"])
def test_chat_with_audio_and_video_equals_reencoding(tokenizer, tmp_path, fusion):
    from mmdialog.chat.sampling import SamplingParams
    from mmdialog.chat.session import ChatSession
    from mmdialog.data.conversation import Audio, Video
    from tests.chat.reference import scratch_ids
    from tests.conftest import random_image

    model, proc = av_model(tokenizer, *fusion)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.normal_(0.0, 0.3)
    params = SamplingParams(max_new_tokens=4)
    session = ChatSession(model, proc, sampling=params)
    clip = Audio(data=wav_bytes(0.4, 8000, 600.0))
    turns = [[Audio(data=wav_bytes(0.2, 8000)), "How many red things are there?"],
             [Video(path=gif(tmp_path / "v.gif", 5, seed=3)), "What colour is it?"],
             [random_image(16), clip, "Is there a green triangle?"], ["What about blue ones?"],
             [Audio(data=wav_bytes(0.4, 8000, 600.0)), "How many of them are large?"]]  # the same clip again
    for t, parts in enumerate(turns):
        session.add("user", *parts)
        expected = scratch_ids(model, proc, session.conv, params)
        session.generate()
        assert session.last.token_ids == expected, f"turn {t}"
    assert session.stats["media_encoded"] == 4  # the repeated clip came from the media cache
    assert len(session.cached_media) == 5
