"""Sounds of the shapes world: 1 to 5 beeps, each low (500 Hz) or high (1500 Hz), in a 1-second clip.

Beep k starts at ONSET + k * SLOT seconds and lasts BEEP seconds (with 5 ms linear fades, so no clicks);
between beeps there is silence. Written as 16-bit PCM mono WAV at 16 kHz with numpy and the standard
`wave` module: what the processor reads (processor.read_wav) and what the audio encoders of the tiny
recipes take (configs/tiny/multimodal.yaml: 16 kHz, 1.0 s).
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass

import numpy as np

from mmdialog.data.worlds.shapes.scene import Draws

PITCHES = {"low": 500.0, "high": 1500.0}  # Hz
SAMPLE_RATE = 16000
CLIP_SECONDS = 1.0
ONSET, SLOT, BEEP, FADE = 0.05, 0.18, 0.10, 0.005  # seconds
MIN_BEEPS, MAX_BEEPS = 1, 5
AMPLITUDE = 0.5  # of full scale


@dataclass(frozen=True)
class Beeps:
    pitches: tuple[str, ...]  # "low" / "high", in order of time

    def __len__(self) -> int:
        return len(self.pitches)

    def to_dict(self) -> dict:
        return {"pitches": list(self.pitches), "sample_rate": SAMPLE_RATE, "seconds": CLIP_SECONDS,
                "onsets": [round(ONSET + k * SLOT, 4) for k in range(len(self.pitches))], "beep_seconds": BEEP,
                "hz": {p: PITCHES[p] for p in PITCHES}}

    @classmethod
    def from_dict(cls, d: dict) -> "Beeps":
        return cls(tuple(d["pitches"]))


def sample_beeps(draws: Draws) -> Beeps:
    n = MIN_BEEPS + draws.below(MAX_BEEPS - MIN_BEEPS + 1)
    return Beeps(tuple(draws.choice(tuple(PITCHES)) for _ in range(n)))


def waveform(beeps: Beeps) -> np.ndarray:
    """(SAMPLE_RATE * CLIP_SECONDS,) int16 samples."""
    total = int(round(SAMPLE_RATE * CLIP_SECONDS))
    out = np.zeros(total, np.float64)
    n, fade = int(round(BEEP * SAMPLE_RATE)), int(round(FADE * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    env = np.minimum(1.0, np.minimum(np.arange(n) + 1, n - np.arange(n)) / fade)  # (n,) fade in and out
    for k, pitch in enumerate(beeps.pitches):
        start = int(round((ONSET + k * SLOT) * SAMPLE_RATE))
        out[start:start + n] = AMPLITUDE * env * np.sin(2 * np.pi * PITCHES[pitch] * t)
    return np.round(out * 32767).astype("<i2")


def encode_wav(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """int16 mono samples -> PCM WAV bytes (the header depends only on the length and rate)."""
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(np.ascontiguousarray(samples, dtype="<i2").tobytes())
    return buf.getvalue()
