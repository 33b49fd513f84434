"""Conversation -> Example: chat template, tokenizer, placeholder expansion, loss mask, media tensors.

Media tensors per modality (what the encoders take):
    images (N, 3, H, W) float in [-1, 1]
    audios (N, S) float waveform in [-1, 1] at the encoder's sample rate, zero-padded to its S samples
    videos (N, F, 3, H, W) float in [-1, 1], F frames sampled evenly over the clip
"""

from __future__ import annotations

import io
import math
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image as PILImage

from mmdialog.data.conversation import Audio, Conversation, Image, Part, Video
from mmdialog.data.tokenizer import ChatTokenizer, TooLong
from mmdialog.errors import MMDialogError
from mmdialog.modalities import MODALITIES, NAMES, by_name
from mmdialog.objectives.lm import IGNORE_INDEX


@dataclass
class Example:
    """One conversation, ready for the collator.

    input_ids: (T,) long, every media placeholder expanded to its encoder's token count
    labels:    (T,) long, -100 everywhere but the tokens of assistant replies (and their <|end|>)
    images:    (N, 3, H, W) float, normalised to [-1, 1], or None when the conversation has no image
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    images: torch.Tensor | None = None
    audios: torch.Tensor | None = None  # (N, S) waveforms, when the conversation has audio
    videos: torch.Tensor | None = None  # (N, F, 3, H, W) frames, when it has video
    weights: torch.Tensor | None = None  # (T,) float: each reply token's turn weight, when a turn's weight is not 1
    reader_ids: list[list[int]] | None = None  # the user-turn reader's ids of each user turn with text (model.reader)
    reader_index: torch.Tensor | None = None  # (T,) long: the user turn (index into reader_ids) of each token, else -1


def image_to_tensor(pixels: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) float in [-1, 1]; resizes with PIL when the size differs."""
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise MMDialogError(f"an image must be (H, W, 3) RGB, got shape {tuple(pixels.shape)}")
    if pixels.shape[0] != size or pixels.shape[1] != size:
        pixels = np.asarray(PILImage.fromarray(pixels).resize((size, size), PILImage.BILINEAR))
    x = torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1).float()
    return x.div_(127.5).sub_(1.0)


@dataclass
class ImageTransform:
    """An Image part -> (3, image_size, image_size) float in [-1, 1] (image_to_tensor)."""

    image_size: int

    @classmethod
    def from_encoder(cls, enc) -> "ImageTransform":
        return cls(enc.image_size)

    def __call__(self, part: Image, where: str = "image") -> torch.Tensor:
        return image_to_tensor(part.load(), self.image_size)


def resample(wave_: torch.Tensor, orig_rate: int, new_rate: int, lowpass_width: int = 6,
             rolloff: float = 0.99) -> torch.Tensor:
    """Band-limited (windowed-sinc) resampling of a waveform (..., S) from orig_rate to new_rate."""
    if orig_rate == new_rate:
        return wave_
    g = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // g, new_rate // g
    base = min(orig, new) * rolloff
    width = math.ceil(lowpass_width * orig / base)
    idx = torch.arange(-width, width + orig, dtype=torch.float64)[None] / orig  # (1, K)
    t = (torch.arange(0, -new, -1, dtype=torch.float64)[:, None] / new + idx) * base  # (new, K)
    t = t.clamp(-lowpass_width, lowpass_width)
    window = torch.cos(t * math.pi / lowpass_width / 2) ** 2
    t = t * math.pi
    kernels = torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t) * window * (base / orig)  # (new, K)
    shape = wave_.shape
    x = wave_.reshape(-1, 1, shape[-1]).to(torch.float64)
    x = F.pad(x, (width, width + orig))
    y = F.conv1d(x, kernels[:, None], stride=orig)  # (B, new, L)
    y = y.transpose(1, 2).reshape(x.shape[0], -1)  # (B, new * L)
    n = math.ceil(new * shape[-1] / orig)
    return y[:, :n].reshape(*shape[:-1], n).to(wave_.dtype)


def read_wav(data: bytes, where: str) -> tuple[np.ndarray, int]:
    """PCM WAV bytes -> (samples float32 in [-1, 1], mono, sample rate)."""
    try:
        with wave.open(io.BytesIO(data)) as w:
            rate, width, channels = w.getframerate(), w.getsampwidth(), w.getnchannels()
            raw = w.readframes(w.getnframes())
    except (wave.Error, EOFError) as e:
        raise MMDialogError(f"{where}: cannot read the audio as PCM WAV ({e}); mmdialog decodes 8/16/24/32-bit "
                            "PCM WAV: convert other formats first (e.g. ffmpeg -i in.mp3 -ar 16000 out.wav)") from None
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128) / 128
    elif width == 2:
        x = np.frombuffer(raw, "<i2").astype(np.float32) / 2**15
    elif width == 3:
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 2**23, v - 2**24, v)).astype(np.float32) / 2**23
    else:
        x = np.frombuffer(raw, "<i4").astype(np.float32) / 2**31
    return x.reshape(-1, channels).mean(1), rate


@dataclass
class AudioTransform:
    """An Audio part -> (num_samples,) float waveform at sample_rate (resampled when the file's rate differs,
    zero-padded at the end); a clip longer than num_samples is an error naming both lengths."""

    sample_rate: int
    num_samples: int

    @classmethod
    def from_encoder(cls, enc) -> "AudioTransform":
        return cls(enc.sample_rate, enc.num_samples)

    def __call__(self, part: Audio, where: str = "audio") -> torch.Tensor:
        name = part.path or "audio data"
        samples, rate = read_wav(part.read_bytes(), f"{where}: {name}")
        x = resample(torch.from_numpy(np.ascontiguousarray(samples)), rate, self.sample_rate)  # (S,)
        if x.shape[0] > self.num_samples:
            raise MMDialogError(f"{where}: {name} lasts {x.shape[0] / self.sample_rate:.2f} s, longer than the audio "
                                f"encoder's {self.num_samples / self.sample_rate:.2f} s ({self.num_samples} samples "
                                f"at {self.sample_rate} Hz); cut it or configure a longer clip")
        return F.pad(x, (0, self.num_samples - x.shape[0]))


def read_frames(path: str, where: str) -> np.ndarray:
    """A clip's frames (T, H, W, 3) uint8 from a .npy array or an animated GIF / PNG / WebP."""
    p = Path(path)
    if not p.is_file():
        raise MMDialogError(f"{where}: video file not found: {path}")
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (ValueError, OSError) as e:
            raise MMDialogError(f"{where}: cannot read {path} as a .npy frame array: {e}") from None
        if arr.ndim != 4 or arr.shape[3] != 3 or arr.dtype != np.uint8:
            raise MMDialogError(f"{where}: {path} holds {arr.dtype} {arr.shape}, expected (frames, H, W, 3) uint8")
        return arr
    try:
        with PILImage.open(p) as im:
            frames = []
            for i in range(getattr(im, "n_frames", 1)):
                im.seek(i)
                frames.append(np.asarray(im.convert("RGB"), dtype=np.uint8))
    except Exception as e:  # PIL raises many types for files it cannot read
        raise MMDialogError(f"{where}: cannot decode video {path} ({e}); mmdialog reads animated GIF/PNG/WebP and "
                            ".npy arrays (frames, H, W, 3) uint8") from None
    return np.stack(frames)


def sample_frames(total: int, budget: int, where: str = "video") -> list[int]:
    """Indices of `budget` frames spread evenly over a clip of `total`: the middle frame of each of
    `budget` equal segments. A clip with fewer frames than the budget is an error naming both numbers."""
    if budget < 1:
        raise MMDialogError(f"the frame budget must be at least 1, got {budget}")
    if total < budget:
        raise MMDialogError(f"{where} has {total} frame(s), fewer than the {budget} the video encoder takes")
    return [min(total - 1, int((i + 0.5) * total / budget)) for i in range(budget)]


@dataclass
class VideoTransform:
    """A Video part -> (num_frames, 3, size, size) float in [-1, 1], frames sampled evenly (sample_frames)."""

    num_frames: int
    image_size: int

    @classmethod
    def from_encoder(cls, enc) -> "VideoTransform":
        return cls(enc.num_frames, enc.image_size)

    def __call__(self, part: Video, where: str = "video") -> torch.Tensor:
        frames = read_frames(part.path, where) if part.path else None
        if frames is None:
            raise MMDialogError(f"{where}: a Video part has no path")
        idx = sample_frames(frames.shape[0], self.num_frames, where=f"{where}: {part.path}")
        return torch.stack([image_to_tensor(frames[i], self.image_size) for i in idx])  # (F, 3, H, W)


def user_texts(conv: Conversation) -> list[str]:
    """The text of each user turn, stripped, in order ("" for a turn of media only): what the reader reads."""
    return [t.text.strip() for t in conv.turns if t.role == "user"]


@dataclass
class MediaInput:
    """How the processor turns one modality's parts into tensors, and how many placeholder tokens one takes."""

    tokens: int
    transform: Callable[[Part, str], torch.Tensor] = field(repr=False)


# modality -> its transform class, as the modality table names it; from_encoder(enc) sizes it to the encoder's input
TRANSFORMS: dict[str, type] = {m.name: globals()[m.transform] for m in MODALITIES}


class Processor:
    """Turns a Conversation into exactly what the collator and `MultimodalLM.forward` consume.

    The same processor runs in training, evaluation, chat and serving.
    """

    def __init__(self, tokenizer: ChatTokenizer, *, image_size: int | None = None, image_tokens: int | None = None,
                 max_length: int = 1024, media: dict[str, MediaInput] | None = None,
                 reader=None):
        """media: the modalities it takes by name ("image", "audio", "video"); image_size/image_tokens: a
        shorthand for media["image"] when media has no image; reader: the model's user-turn reader
        (encoders/reader.py: tokenize(texts), warm(ids)), when it has one."""
        self.tokenizer = tokenizer
        self.reader = reader
        self.max_length = max_length
        self.media: dict[str, MediaInput] = dict(media or {})
        if image_size is not None and image_tokens is not None:
            self.media.setdefault("image", MediaInput(image_tokens, ImageTransform(image_size)))

    @property
    def image_size(self) -> int | None:
        """The side of the images it takes (media["image"]'s), None without images."""
        image = self.media.get("image")
        return getattr(image.transform, "image_size", None) if image is not None else None

    @property
    def image_tokens(self) -> int | None:
        """Placeholder tokens one image takes (media["image"]'s), None without images."""
        image = self.media.get("image")
        return image.tokens if image is not None else None

    @classmethod
    def for_model(cls, tokenizer: ChatTokenizer, model, max_length: int = 1024) -> "Processor":
        """The processor for a MultimodalLM: every modality it has an encoder for, with the encoder's input
        size (image_size; sample_rate and num_samples; num_frames and image_size) and token count."""
        media = {modality: MediaInput(model.num_media_tokens(modality), TRANSFORMS[modality].from_encoder(enc))
                 for modality, enc in model.encoders.items() if modality in TRANSFORMS}
        return cls(tokenizer, max_length=max_length, media=media, reader=model.reader)

    def media_tokens(self, modality: str) -> int:
        """Placeholder tokens one item of this modality takes after expansion."""
        if modality not in self.media:
            raise MMDialogError(f"this processor takes no {modality} (it takes: {', '.join(self.media) or 'text only'})")
        return self.media[modality].tokens

    def token_ids(self, conv: Conversation, add_generation_prompt: bool = False, max_tokens: int | None = None) -> list[int]:
        """Token ids with one placeholder per media item (not yet expanded). The conversation's text is plain
        text: only the template places special tokens (roles, turn ends, media placeholders).
        max_tokens: raise TooLong early when there would be more (see ChatTokenizer.encode_conversation)."""
        return self.tokenizer.encode_conversation(conv, add_generation_prompt, max_tokens)

    def expand(self, ids: list[int], counts: int | dict[str, int], where: str = "conversation") -> list[int]:
        """Expand each media placeholder to its modality's token count, after checking that the text holds as
        many placeholders as there are items. counts: items by modality; an int counts images only."""
        if isinstance(counts, int):
            counts = {"image": counts}
        expand_to = {}
        for modality, n in counts.items():
            ph = self.tokenizer.media_ids[modality]
            found = ids.count(ph)
            if found != n:
                raise MMDialogError(f"{where}: the text holds {found} {by_name(modality).placeholder} placeholder(s) "
                                    f"but {n} {by_name(modality).noun} were given")
            if n:
                if modality not in self.media:
                    raise MMDialogError(f"{where}: the conversation holds {n} {by_name(modality).noun} but this model "
                                        f"has no {modality} encoder (it takes: {', '.join(self.media) or 'text only'})")
                expand_to[ph] = self.media[modality].tokens
        out: list[int] = []
        for i in ids:
            out.extend([i] * expand_to[i] if i in expand_to else [i])
        return out

    def counts(self, conv: Conversation) -> dict[str, int]:
        """Media items by modality (every modality, 0 where absent)."""
        return {m: len(conv.media(m)) for m in NAMES}

    def expanded_ids(self, conv: Conversation, add_generation_prompt: bool = False, where: str = "conversation",
                     max_tokens: int | None = None) -> list[int]:
        """Token ids with every placeholder expanded: what the model reads (and its length).
        max_tokens: a limit on that length; over it, TooLong (with at least how many) before tokenising all."""
        counts = self.counts(conv)
        if max_tokens is None:
            return self.expand(self.token_ids(conv, add_generation_prompt), counts, where)
        extra = sum(n * (self.media[m].tokens - 1) for m, n in counts.items() if n and m in self.media)
        try:
            ids = self.token_ids(conv, add_generation_prompt, max_tokens - extra)
        except TooLong as e:
            raise TooLong(e.at_least + extra, max_tokens) from None
        return self.expand(ids, counts, where)

    def labels_for(self, ids: list[int]) -> list[int]:
        """Supervise assistant replies: every token after <|assistant|> up to and including <|end|>."""
        assistant, end = self.tokenizer.role_ids["assistant"], self.tokenizer.end_id
        labels, inside = [], False
        for i in ids:
            labels.append(i if inside else IGNORE_INDEX)
            if i == assistant:
                inside = True
            elif i == end:
                inside = False
        return labels

    def media_tensor(self, conv: Conversation, modality: str, where: str = "conversation") -> torch.Tensor | None:
        """One modality's items stacked: images (N, 3, H, W), audios (N, S), videos (N, F, 3, H, W); None if none."""
        parts = conv.media(modality)
        if not parts:
            return None
        if modality not in self.media:
            raise MMDialogError(f"{where}: the conversation holds {by_name(modality).noun} but this model has no "
                                f"{modality} encoder")
        transform = self.media[modality].transform
        return torch.stack([transform(p, f"{where}: {modality} {i}") for i, p in enumerate(parts)])

    def __call__(self, conv: Conversation, add_generation_prompt: bool = False, where: str = "conversation") -> Example:
        try:
            ids = self.expanded_ids(conv, add_generation_prompt, where, max_tokens=self.max_length)
        except TooLong as e:
            raise MMDialogError(f"{where}: at least {e.at_least} tokens exceed max_length {self.max_length}") from None
        labels = self.labels_for(ids)
        if add_generation_prompt:  # the trailing <|assistant|> opens a reply that is not there yet
            labels[-1] = IGNORE_INDEX
        reader_ids, reader_index = self.reader_inputs(conv, ids) if self.reader is not None else (None, None)
        return Example(torch.tensor(ids), torch.tensor(labels),
                       **{m.key: self.media_tensor(conv, m.name, where) for m in MODALITIES},
                       weights=self.weights_for(conv, ids), reader_ids=reader_ids,
                       reader_index=None if reader_index is None else torch.tensor(reader_index))

    def warm(self, conversations: list[Conversation], progress: bool = False) -> int:
        """Read every user turn of many conversations with the user-turn reader before they are processed."""
        if self.reader is None:
            return 0
        return self.read_texts([t for c in conversations for t in user_texts(c) if t], progress)

    def read_texts(self, texts: list[str], progress: bool = False) -> int:
        """Tokenise user-turn texts for the reader in one call (each alone costs the tokenizer's per-call overhead)
        and encode the new ones in batches by length (in training or scoring steps they would come a few at a
        time). Returns the turns encoded; nothing without a reader."""
        if self.reader is None:
            return 0
        return self.reader.warm(self.reader.tokenize(texts), progress=progress)

    def reader_inputs(self, conv: Conversation, ids: list[int]) -> tuple[list[list[int]], list[int]]:
        """What the user-turn reader takes for one rendering: the reader's ids of each user turn that has text,
        and for every position of `ids` the index of its turn among those (-1: not a user turn's text token;
        media placeholders, role tokens and <|end|> are not). The k-th <|user|> of the rendering is the
        conversation's k-th user turn (only the template places role tokens)."""
        if self.reader is None:
            raise MMDialogError("this processor has no user-turn reader (the model has no model.reader)")
        texts = user_texts(conv)
        user, end = self.tokenizer.role_ids["user"], self.tokenizer.end_id
        media = set(self.tokenizer.media_ids.values())
        kept = [k for k, t in enumerate(texts) if t]  # turns with text: a turn of media only gets nothing
        row = {k: i for i, k in enumerate(kept)}
        index, k, inside = [], -1, False
        for t in ids:
            if t == end:
                inside = False
            index.append(row.get(k, -1) if inside and t not in media else -1)
            if t == user:
                k, inside = k + 1, True
        if k + 1 != len(texts):
            raise MMDialogError(f"the rendering holds {k + 1} user turn(s), the conversation {len(texts)}")
        return self.reader.tokenize([texts[k] for k in kept]), index

    def weights_for(self, conv: Conversation, ids: list[int]) -> torch.Tensor | None:
        """(T,) float: the tokens of the k-th assistant reply (from its <|assistant|> to its <|end|>) carry the k-th
        assistant turn's weight, every other token 1. None when every turn weighs 1."""
        replies = [t.weight for t in conv.turns if t.role == "assistant"]
        if all(w == 1 for w in replies):
            return None
        assistant, end = self.tokenizer.role_ids["assistant"], self.tokenizer.end_id
        out, k, inside = torch.ones(len(ids)), -1, False
        for i, t in enumerate(ids):
            if inside and k < len(replies):
                out[i] = replies[k]
            if t == assistant:
                k, inside = k + 1, True
            elif t == end:
                inside = False
        return out
