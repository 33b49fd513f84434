"""The torch log-mel front end (transformers' mel filters) equals Whisper's feature extractor."""

import numpy as np
import torch

from mmdialog.encoders.audio import LogMel, mel_filterbank


def test_mel_filters_are_ordered_triangles_over_the_band():
    fb = mel_filterbank(n_freqs=201, n_mels=80, sample_rate=16000, f_min=0.0, f_max=8000.0)
    assert fb.shape == (201, 80) and fb.dtype == torch.float32 and (fb >= 0).all()
    peaks = fb.argmax(dim=0)
    assert (peaks[1:] >= peaks[:-1]).all() and (fb.sum(dim=0) > 0).all()  # low to high, none empty
    low = mel_filterbank(n_freqs=201, n_mels=40, sample_rate=16000, f_min=0.0, f_max=4000.0)
    assert low[101:].abs().sum() == 0  # nothing above f_max (bin 100 is 4 kHz)


def test_log_mel_equals_the_whisper_feature_extractor():
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(0)
    t = np.arange(8000) / 16000
    wave = (0.5 * np.sin(2 * np.pi * 440 * t) + 0.05 * rng.standard_normal(8000)).astype(np.float32)
    fe = WhisperFeatureExtractor(feature_size=80)
    ref = fe._np_extract_fbank_features(wave[None], "cpu")[0]  # (80, 50)
    ours = LogMel(sample_rate=16000, n_mels=80, f_max=8000.0)(torch.from_numpy(wave)[None])[0]
    assert ours.shape == (80, 50) == ref.shape
    np.testing.assert_allclose(ours.numpy(), ref, atol=2e-4)


def test_log_mel_stays_fp32_under_autocast():
    mel = LogMel(sample_rate=8000, n_fft=128, hop_length=64, n_mels=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mel(torch.randn(2, 640))
    assert out.dtype == torch.float32 and out.shape == (2, 16, 10)
