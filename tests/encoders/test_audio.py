"""The torch log-mel front end (transformers' mel filters) equals Whisper's feature extractor."""

import math

import numpy as np
import pytest
import torch

from mmdialog.encoders.audio import LogMel, mel_filterbank


def _slaney_filterbank(n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> np.ndarray:
    """The hand-written filterbank mmdialog used before transformers' (librosa's formula), in float64."""
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, math.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp

    def hz_to_mel(f):
        return min_log_mel + math.log(f / min_log_hz) / logstep if f >= min_log_hz else f / f_sp

    mels = np.linspace(hz_to_mel(f_min), hz_to_mel(f_max), n_mels + 2)
    edges = np.where(mels >= min_log_mel, min_log_hz * np.exp(logstep * (mels - min_log_mel)), mels * f_sp)
    fft_freqs = np.linspace(0, sample_rate // 2, n_freqs)  # (n_freqs,)
    diff = np.diff(edges)  # (n_mels + 1,)
    slopes = edges[None, :] - fft_freqs[:, None]  # (n_freqs, n_mels + 2)
    fb = np.maximum(0, np.minimum(-slopes[:, :-2] / diff[:-1], slopes[:, 2:] / diff[1:]))  # (n_freqs, n_mels)
    return fb * (2.0 / (edges[2:] - edges[:-2]))[None, :]


@pytest.mark.parametrize("n_freqs,n_mels,sample_rate,f_min,f_max", [
    (201, 80, 16000, 0.0, 8000.0),  # Whisper
    (201, 128, 16000, 0.0, 8000.0),  # Whisper large-v3
    (201, 64, 16000, 0.0, 8000.0),  # the audio encoders' default
    (65, 16, 8000, 50.0, 3000.0),  # a band that does not start at 0 Hz, below and above 1 kHz
])
def test_mel_filters_equal_the_former_hand_written_ones(n_freqs, n_mels, sample_rate, f_min, f_max):
    ours = mel_filterbank(n_freqs=n_freqs, n_mels=n_mels, sample_rate=sample_rate, f_min=f_min, f_max=f_max)
    ref = _slaney_filterbank(n_freqs, n_mels, sample_rate, f_min, f_max)
    assert ours.shape == ref.shape == (n_freqs, n_mels)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=0, atol=1e-6)


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
