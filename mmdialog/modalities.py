"""The media modalities, in one table: what each one is called in every layer.

    name   batch key  placeholder  tag      Part   transform       noun
    image  images     <|image|>    <image>  Image  ImageTransform  image(s)
    audio  audios     <|audio|>    <audio>  Audio  AudioTransform  audio clip(s)
    video  videos     <|video|>    <video>  Video  VideoTransform  video(s)

name:        a Part's `type`; the key of model.encoders, tokenizer.media_ids and the encoded-media dicts
key:         the Example field, the collated batch key and the MultimodalLM.forward / encode_media argument
             (and the name of a ShareGPT-style record's path list)
placeholder: the tokenizer's special token, one per item in the rendered template (the processor expands it)
tag:         how dataset text marks an item (ShareGPT-style and LLaVA records, the shapes world's media files)
part:        the class in mmdialog.data.conversation (conversation.MEDIA_PARTS resolves it)
transform:   the class in mmdialog.data.processor that turns a part into its encoder's input (processor.TRANSFORMS)
noun:        the plural of count errors ("2 image(s) were given")

Part and transform are named, not imported: this table sits below the model, and data/ above it
(tests/test_imports.py).
The order is the order of the placeholders among the tokenizer's special tokens, and so of their ids:
a new modality goes at the end.
"""

from __future__ import annotations

from dataclasses import dataclass

from mmdialog.errors import MMDialogError

PART_MODULE = "mmdialog.data.conversation"


@dataclass(frozen=True)
class Modality:
    name: str
    key: str
    placeholder: str
    tag: str
    part: str
    transform: str
    noun: str


MODALITIES = (
    Modality("image", "images", "<|image|>", "<image>", "Image", "ImageTransform", "image(s)"),
    Modality("audio", "audios", "<|audio|>", "<audio>", "Audio", "AudioTransform", "audio clip(s)"),
    Modality("video", "videos", "<|video|>", "<video>", "Video", "VideoTransform", "video(s)"),
)
NAMES = tuple(m.name for m in MODALITIES)  # ("image", "audio", "video")
BATCH_KEYS = tuple(m.key for m in MODALITIES)  # ("images", "audios", "videos")

_BY_NAME = {m.name: m for m in MODALITIES}
_BY_KEY = {m.key: m for m in MODALITIES}
_BY_PART = {m.part: m for m in MODALITIES}


def by_name(name: str) -> Modality:
    """The modality called `name` ("image"), e.g. a Part's type or an encoder's key."""
    if name not in _BY_NAME:
        raise MMDialogError(f"unknown modality {name!r}; mmdialog has {', '.join(NAMES)}")
    return _BY_NAME[name]


def by_key(key: str) -> Modality:
    """The modality whose batch key (forward() argument) is `key` ("images")."""
    if key not in _BY_KEY:
        raise MMDialogError(f"unknown media batch key {key!r}; mmdialog has {', '.join(BATCH_KEYS)}")
    return _BY_KEY[key]


def by_part(part) -> Modality:
    """The modality of a media Part (an instance or its class, from mmdialog.data.conversation)."""
    cls = part if isinstance(part, type) else type(part)
    if cls.__module__ != PART_MODULE or cls.__name__ not in _BY_PART:
        raise MMDialogError(f"{cls.__name__} is not a media part; media parts are "
                            f"{', '.join(m.part for m in MODALITIES)} of {PART_MODULE}")
    return _BY_PART[cls.__name__]
