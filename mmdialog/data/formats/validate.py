"""Checks on a converted conversation, shared by `mmdialog data check` and training.

The converters already refused what the record's structure gets wrong (fields, roles, tags against
media, empty replies). Here: media that the model cannot encode, media files that are missing or do
not decode, reserved tokens in the text, and the length (tokens through the processor when one is
given, else characters).

Media are accepted exactly when the processor can read them: PCM WAV audio (processor.read_wav), and
video as animated GIF/PNG/WebP or a .npy frame array (processor.read_frames), decoded here by the same
functions. MP4, WebM, AVI, Ogg, MP3 and FLAC are recognised by their header and refused with the reason
(decoding them needs a codec library mmdialog does not depend on) and a conversion command.
"""

from __future__ import annotations

import io
import math
import wave
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmdialog.data.conversation import Audio, Conversation, Image, Text, Video
from mmdialog.data.formats.common import (
    MISSING_MEDIA, RESERVED, TOO_LONG, UNDECODABLE, UNSUPPORTED, RecordError,
)
from mmdialog.data.processor import AudioTransform, Processor, VideoTransform, read_frames
from mmdialog.data.tokenizer import SPECIAL_TOKENS, TooLong
from mmdialog.errors import MMDialogError


@dataclass
class Checks:
    media: bool = True  # open every media file and decode it (images fully; audio and video by their headers)
    max_length: int = 0  # tokens with a processor, characters without; 0: the processor's max_length, or no limit
    processor: Processor | None = None
    modalities: frozenset[str] | None = None  # media kinds the model encodes; None: any


def check_conversation(conv: Conversation, checks: Checks) -> None:
    """Raise RecordError for the first problem found."""
    media = [(i, p) for i, t in enumerate(conv.turns) for p in t.parts if not isinstance(p, Text)]
    if checks.modalities is not None:
        for i, p in media:
            if p.type not in checks.modalities:
                raise RecordError(UNSUPPORTED, f"turn {i} holds {p.type}, but the model encodes only "
                                               f"{', '.join(sorted(checks.modalities)) or 'text'}")
    for i, t in enumerate(conv.turns):
        for p in t.parts:
            if isinstance(p, Text):
                for tok in SPECIAL_TOKENS:
                    if tok in p.text:
                        raise RecordError(RESERVED, f"turn {i} contains {tok}, which the tokenizer reserves")
    if checks.media:
        for i, p in media:
            check_media(p, f"turn {i}", checks.processor)
    _check_length(conv, checks)


def _check_length(conv: Conversation, checks: Checks) -> None:
    if checks.processor is not None:
        proc = checks.processor
        limit = checks.max_length or proc.max_length
        try:  # counted exactly up to 8x the limit; a longer record is refused without tokenising it all
            n = len(proc.expanded_ids(conv, max_tokens=8 * limit))
        except TooLong as e:
            raise RecordError(TOO_LONG, f"at least {e.at_least} tokens (media expanded) > {limit}") from None
        except MMDialogError as e:
            raise RecordError(RESERVED, str(e)) from None
        if n > limit:
            raise RecordError(TOO_LONG, f"{n} tokens (media expanded) > {limit}")
    elif checks.max_length:
        n = sum(len(t.text) for t in conv.turns)
        if n > checks.max_length:
            raise RecordError(TOO_LONG, f"{n} characters > {checks.max_length} "
                                        "(characters: give a checkpoint to count tokens)")


# ----------------------------------------------------------------------------- media

def check_media(part, where: str, processor: Processor | None = None) -> None:
    """Decode the part as the processor would; with a processor, also check what its encoders take
    (an audio clip no longer than the audio encoder's, a video with at least its frame budget)."""
    if isinstance(part, Image):
        _check_image(part, where)
    elif isinstance(part, Audio):
        _check_audio(part, where, processor)
    elif isinstance(part, Video):
        _check_video(part, where, processor)


def _missing(kind: str, path: str, where: str) -> RecordError:
    return RecordError(MISSING_MEDIA, f"{where}: {kind} file not found: {path}")


def _check_image(im: Image, where: str) -> None:
    if im.pixels is not None:
        if im.pixels.ndim != 3 or im.pixels.shape[2] != 3 or im.pixels.dtype != np.uint8:
            raise RecordError(UNDECODABLE, f"{where}: image pixels are {im.pixels.dtype} {im.pixels.shape}, "
                                           "not (H, W, 3) uint8")
        return
    if not Path(im.path).is_file():
        raise _missing("image", im.path, where)
    try:  # the part keeps the pixels, so the processor does not decode the file again
        im.load()
    except MMDialogError as e:
        raise RecordError(UNDECODABLE, f"{where}: {e}") from None


# What the processor decodes, and so what the checks accept.
AUDIO = ("wav",)
VIDEO = ("gif", "png", "webp", "npy")
# Recognised by their header, never decoded (that needs a codec library): refused with this advice.
CONVERT = {
    "audio": "convert it to PCM WAV, e.g. `ffmpeg -i in.mp3 -ar 16000 out.wav`",
    "video": "convert it to an animated GIF/PNG/WebP or a .npy array (frames, H, W, 3) uint8, "
             "e.g. `ffmpeg -i in.mp4 -vf fps=4 out.gif`",
}


def sniff(head: bytes) -> str | None:
    """The container a file's first 12 bytes announce, or None."""
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if head[:6] == b"\x93NUMPY":
        return "npy"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"fLaC":
        return "flac"
    if head[:4] == b"OggS":
        return "ogg"
    if head[:3] == b"ID3" or (len(head) > 1 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0):
        return "mp3"
    if head[4:8] == b"ftyp":
        return "mp4"
    if head[:4] == b"\x1aE\xdf\xa3":
        return "webm"
    return None


def _check_container(path: str | None, data: bytes | None, kind: str, allowed: tuple[str, ...], where: str) -> str:
    """The container name, after checking that the file exists and its header is one of `allowed`."""
    what = path if path is not None else "data"
    if data is None:
        if not Path(path).is_file():
            raise _missing(kind, path, where)
        with open(path, "rb") as f:
            head = f.read(12)
    else:
        head = data[:12]
    found = sniff(head)
    if found not in allowed:
        known = " or ".join(a.upper() for a in allowed) if len(allowed) < 3 else \
            ", ".join(a.upper() for a in allowed[:-1]) + f" or {allowed[-1].upper()}"
        if found in ("mp4", "webm", "avi", "ogg", "mp3", "flac"):
            raise RecordError(UNDECODABLE, f"{where}: {kind} {what} is {found.upper()}, which mmdialog does not "
                                           f"decode (it reads {kind} as {known}; {found.upper()} needs a codec "
                                           f"library): {CONVERT[kind]}")
        raise RecordError(UNDECODABLE, f"{where}: {kind} {what} is not {known}"
                          + (f" (its header is {found.upper()}'s)" if found else " (unknown header)"))
    return found


def _check_audio(a: Audio, where: str, processor: Processor | None = None) -> None:
    """WAV, decoded: header and every frame present; with a processor, no longer than its audio encoder takes."""
    _check_container(a.path, a.data, "audio", AUDIO, where)
    what = a.path if a.path is not None else "data"
    try:
        with wave.open(a.path if a.data is None else io.BytesIO(a.data)) as w:
            n, width, channels, rate = w.getnframes(), w.getsampwidth(), w.getnchannels(), w.getframerate()
            got = len(w.readframes(n))
    except (wave.Error, EOFError, OSError) as e:
        raise RecordError(UNDECODABLE, f"{where}: audio {what}: {e}") from None
    if got != n * width * channels:
        raise RecordError(UNDECODABLE, f"{where}: audio {what} is truncated: {got} of {n * width * channels} "
                                       "bytes of samples")
    want = getattr(processor.media.get("audio"), "transform", None) if processor is not None else None
    if isinstance(want, AudioTransform) and math.ceil(n * want.sample_rate / rate) > want.num_samples:
        raise RecordError(UNSUPPORTED, f"{where}: audio {what} lasts {n / rate:.2f} s, longer than the audio "
                                       f"encoder's {want.num_samples / want.sample_rate:.2f} s")


def _check_video(v: Video, where: str, processor: Processor | None = None) -> None:
    """Decoded frame by frame as the processor reads it; with a processor, at least its frame budget."""
    _check_container(v.path, None, "video", VIDEO, where)
    try:
        frames = read_frames(v.path, where)
    except MMDialogError as e:
        raise RecordError(UNDECODABLE, str(e)) from None
    want = getattr(processor.media.get("video"), "transform", None) if processor is not None else None
    if isinstance(want, VideoTransform) and frames.shape[0] < want.num_frames:
        raise RecordError(UNSUPPORTED, f"{where}: video {v.path} has {frames.shape[0]} frame(s), fewer than the "
                                       f"{want.num_frames} the video encoder takes")
