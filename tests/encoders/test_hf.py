"""Hugging Face adapters on tiny backbones built from configs, saved to and loaded from local directories."""

import pytest
import torch

from mmdialog.encoders import HFTextEncoder, HFVisionEncoder, WhisperEncoderAdapter
from mmdialog.errors import MMDialogError

SIGLIP = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 2, "image_size": 16, "patch_size": 8}
CLIP = {**SIGLIP, "model_type": "clip_vision_model", "projection_dim": 16}
WHISPER = {"d_model": 32, "encoder_layers": 1, "encoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_layers": 1,
           "decoder_attention_heads": 2, "decoder_ffn_dim": 64, "num_mel_bins": 16, "max_source_positions": 25,
           "vocab_size": 64, "max_target_positions": 16, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
           "decoder_start_token_id": 1, "suppress_tokens": [], "begin_suppress_tokens": []}


@pytest.mark.parametrize("hf_config", [SIGLIP, CLIP], ids=["siglip", "clip"])
def test_vision_tower_from_config_and_from_a_directory(hf_config, tmp_path):
    torch.manual_seed(0)
    enc = HFVisionEncoder(hf_config=hf_config).eval()
    assert enc.num_tokens == 4 and enc.dim == 32 and enc.image_size == 16
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    with torch.no_grad():
        out = enc(x)
        assert out.shape == (2, 4, 32)  # CLIP's CLS token is dropped
        # the adapter re-normalises [-1, 1] pixels to the tower's mean and std
        ref = enc.model(pixel_values=((x + 1) / 2 - enc.mean) / enc.std).last_hidden_state
        torch.testing.assert_close(out, ref[:, 1:] if enc.is_clip else ref)
        assert enc.forward_levels(x, (0, -1)).shape == (2, 2, 4, 32)
    enc.model.save_pretrained(tmp_path)
    loaded = HFVisionEncoder(path=str(tmp_path)).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out)


def test_backbone_directory_without_weights_is_named(tmp_path):
    enc = HFVisionEncoder(hf_config=SIGLIP)
    enc.model.save_pretrained(tmp_path)
    for f in tmp_path.glob("*.safetensors"):
        f.rename(f.with_suffix(".bin"))
    with pytest.raises(MMDialogError, match=r"lacks weights: no \*.safetensors.*pickles are not loaded"):
        HFVisionEncoder(path=str(tmp_path))
    with pytest.raises(MMDialogError, match="directory not found"):
        HFVisionEncoder(path=str(tmp_path / "nope"))
    with pytest.raises(MMDialogError, match="SigLIP or CLIP"):
        HFVisionEncoder(hf_config={**SIGLIP, "model_type": "vit"})
    with pytest.raises(MMDialogError, match="exactly one of path"):
        HFVisionEncoder()


def test_whisper_encoder_equals_transformers_on_its_own_features(tmp_path):
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    torch.manual_seed(0)
    full = WhisperModel(WhisperConfig(**WHISPER)).eval()
    full.save_pretrained(tmp_path)
    enc = WhisperEncoderAdapter(path=str(tmp_path))
    assert enc.num_samples == 50 * 160 and enc.num_tokens == 25 and enc.dim == 32
    wave = torch.sin(torch.arange(enc.num_samples) * 0.05) * 0.3
    feats = WhisperFeatureExtractor(feature_size=16)._np_extract_fbank_features(wave[None].numpy(), "cpu")
    with torch.no_grad():
        ref = full.encoder(input_features=torch.from_numpy(feats)).last_hidden_state
        out = enc(wave[None])
    assert out.shape == (1, 25, 32)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    assert WhisperEncoderAdapter(hf_config=WHISPER).forward_levels(wave[None], (0, -1)).shape == (1, 2, 25, 32)


def test_text_encoder_from_a_directory(tmp_path):
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=40, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64, max_position_embeddings=24)).eval()
    bert.save_pretrained(tmp_path)
    enc = HFTextEncoder(path=str(tmp_path), max_len=16).eval()
    ids, mask = torch.tensor([[2, 5, 7, 0]]), torch.tensor([[1, 1, 1, 0]])
    with torch.no_grad():
        torch.testing.assert_close(enc(ids, mask), bert(input_ids=ids, attention_mask=mask).last_hidden_state)
    assert enc.num_tokens == 16 and enc.dim == 32
    with pytest.raises(MMDialogError, match="no tokenizer"):
        HFTextEncoder(hf_config={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 1,
                                 "num_attention_heads": 2, "intermediate_size": 64}).tokenize(["hi"])
