"""Audio encoders on a log-mel front end written in torch (no torchaudio).

    waveform (N, S) at sample_rate --LogMel--> (N, n_mels, frames), frames = S // hop_length
    --a VGGish-style CNN or a transformer--> (N, num_tokens, dim) along time

LogMel with Whisper's settings (n_fft 400, hop 160, 80 or 128 slaney mels up to 8 kHz, log10 clipped 8
below the maximum and scaled) gives what WhisperFeatureExtractor gives, so the Whisper adapter
(encoders/hf.py) and these encoders share it.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from mmdialog.encoders.common import TransformerEncoder, check_input, select_levels
from mmdialog.errors import MMDialogError
from mmdialog.registry import ENCODERS


def mel_filterbank(*, n_freqs: int, n_mels: int, sample_rate: int, f_min: float, f_max: float) -> torch.Tensor:
    """(n_freqs, n_mels) triangular filters, slaney scale and area normalisation (librosa's and Whisper's),
    from transformers.audio_utils."""
    from transformers.audio_utils import mel_filter_bank

    return torch.from_numpy(mel_filter_bank(num_frequency_bins=n_freqs, num_mel_filters=n_mels, min_frequency=f_min,
                                            max_frequency=f_max, sampling_rate=sample_rate, norm="slaney",
                                            mel_scale="slaney")).float()


class LogMel(nn.Module):
    """(N, S) waveform -> (N, n_mels, S // hop_length) Whisper-style log-mel spectrogram, always in fp32."""

    def __init__(self, *, sample_rate: int, n_fft: int = 400, hop_length: int = 160, n_mels: int = 80,
                 f_min: float = 0.0, f_max: float | None = None):
        super().__init__()
        f_max = float(f_max if f_max is not None else sample_rate / 2)
        if not 0 <= f_min < f_max <= sample_rate / 2:
            raise MMDialogError(f"log-mel band {f_min}..{f_max} Hz must lie within 0..{sample_rate / 2} Hz")
        self.n_fft, self.hop_length, self.n_mels = n_fft, hop_length, n_mels
        # buffers, not parameters, and not saved: they follow from the sizes
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(n_freqs=n_fft // 2 + 1, n_mels=n_mels, sample_rate=sample_rate,
                                                       f_min=f_min, f_max=f_max), persistent=False)

    def frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wave.device.type, enabled=False):
            x = wave.float()
            spec = torch.stft(x, self.n_fft, self.hop_length, window=self.window.float(), return_complex=True)
            power = spec[..., :-1].abs() ** 2  # (N, n_fft/2 + 1, frames): the last frame dropped, as Whisper does
            mel = self.filters.float().T @ power  # (N, n_mels, frames)
            log = mel.clamp(min=1e-10).log10()
            peak = log.amax(dim=(-2, -1), keepdim=True)  # per clip
            return (torch.maximum(log, peak - 8.0) + 4.0) / 4.0


def _front_end(sample_rate: int, clip_seconds: float, n_mels: int, n_fft: int, hop_length: int) -> tuple[LogMel, int]:
    """The LogMel of an encoder of fixed-length clips, and a clip's length in samples."""
    num_samples = round(clip_seconds * sample_rate)
    if num_samples < n_fft:
        raise MMDialogError(f"an audio clip of {clip_seconds} s has {num_samples} samples, fewer than n_fft {n_fft}")
    return LogMel(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop_length, n_mels=n_mels), num_samples


class _AudioBase(nn.Module):
    sample_rate: int
    num_samples: int

    def _setup(self, sample_rate: int, clip_seconds: float, n_mels: int, n_fft: int, hop_length: int):
        self.sample_rate = sample_rate
        self.logmel, self.num_samples = _front_end(sample_rate, clip_seconds, n_mels, n_fft, hop_length)
        return self.logmel.frames(self.num_samples)

    def _check(self, audio: torch.Tensor, name: str) -> None:
        check_input(audio, (None, self.num_samples), f"{name} encoder (waveforms of {self.num_samples} samples at "
                                                     f"{self.sample_rate} Hz)")


@ENCODERS.register("audio_cnn")
class AudioCNNEncoder(_AudioBase):
    """VGGish-style: the log-mel image through conv3x3-GroupNorm-GELU + 2x2 max-pool stages, then the
    frequency axis averaged away: one token per remaining time step. num_tokens = frames // 2**len(widths)."""

    def __init__(self, *, sample_rate: int = 16000, clip_seconds: float = 1.0, n_mels: int = 64, n_fft: int = 400,
                 hop_length: int = 160, dim: int = 128, widths: tuple[int, ...] = (32, 64, 128)):
        super().__init__()
        frames = self._setup(sample_rate, clip_seconds, n_mels, n_fft, hop_length)
        self.dim = dim
        self.num_tokens = frames // 2 ** len(widths)
        if self.num_tokens < 1 or n_mels < 2 ** len(widths):
            raise MMDialogError(f"{len(widths)} pooling stages halve {frames} frames and {n_mels} mels below one")
        c, stages = 1, []
        for w in widths:
            stages.append(nn.Sequential(nn.Conv2d(c, w, 3, padding=1, bias=False), nn.GroupNorm(next(g for g in (8, 4, 2, 1) if w % g == 0), w), nn.GELU(),
                                        nn.MaxPool2d(2)))
            c = w
        self.stages = nn.ModuleList(stages)
        self.level_proj = nn.ModuleList(nn.Linear(w, dim) for w in (1, *widths))
        self.norm = nn.LayerNorm(dim)
        self.num_levels = len(widths) + 1

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.forward_levels(audio, (-1,))[:, 0]

    def forward_levels(self, audio: torch.Tensor, levels) -> torch.Tensor:
        """(N, S) -> (N, L, num_tokens, dim): level 0 the log-mel itself, level i after stage i."""
        self._check(audio, "audio_cnn")
        x = self.logmel(audio)[:, None]  # (N, 1, n_mels, frames)
        maps = [x]
        for stage in self.stages:
            maps.append(stage(maps[-1]))  # (N, w_i, mels / 2^i, frames / 2^i)
        wanted = {lv % self.num_levels for lv in levels if -self.num_levels <= lv < self.num_levels}
        feats = []
        for i, (m, proj) in enumerate(zip(maps, self.level_proj)):
            if i not in wanted:
                feats.append(None)
                continue
            t = m.mean(2)  # (N, w, frames_i): frequency averaged away
            t = F.adaptive_avg_pool1d(t, self.num_tokens) if t.shape[-1] != self.num_tokens else t
            feats.append(self.norm(proj(t.transpose(1, 2).to(proj.weight.dtype))))  # (N, num_tokens, dim)
        return select_levels(feats, levels, "audio_cnn")


@ENCODERS.register("audio_transformer")
class AudioTransformerEncoder(_AudioBase, TransformerEncoder):
    """Whisper-encoder-like: two 1-D convolutions over time (the second at stride 2), learned positions,
    bidirectional transformer blocks. num_tokens = ceil(frames / 2).

    Stem: log-mel, then the two convolutions, one token per remaining time step; the rest is the
    TransformerEncoder skeleton (level 0 the convolutions' output, level i after block i)."""

    NAME = "audio_transformer"

    def __init__(self, *, sample_rate: int = 16000, clip_seconds: float = 1.0, n_mels: int = 64, n_fft: int = 400,
                 hop_length: int = 160, dim: int = 128, depth: int = 2, heads: int = 4, mlp_ratio: float = 4.0):
        logmel, num_samples = _front_end(sample_rate, clip_seconds, n_mels, n_fft, hop_length)
        frames = logmel.frames(num_samples)
        stem = {"logmel": logmel, "conv1": nn.Conv1d(n_mels, dim, 3, padding=1),
                "conv2": nn.Conv1d(dim, dim, 3, stride=2, padding=1)}
        super().__init__(stem=stem, num_tokens=(frames - 1) // 2 + 1, dim=dim, depth=depth, heads=heads,
                         mlp_ratio=mlp_ratio)
        self.sample_rate, self.num_samples = sample_rate, num_samples

    def embed(self, audio: torch.Tensor) -> torch.Tensor:
        self._check(audio, "audio_transformer")
        x = self.logmel(audio).to(self.conv1.weight.dtype)  # (N, n_mels, frames)
        x = F.gelu(self.conv2(F.gelu(self.conv1(x))))  # (N, dim, num_tokens)
        return x.transpose(1, 2)  # (N, num_tokens, dim)
