"""The unit of data everywhere: a Conversation of Turns, each a list of typed parts.

Datasets yield it, the chat session holds it, the processor renders it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np
from PIL import Image as PILImage

from mmdialog.errors import MMDialogError
from mmdialog.modalities import MODALITIES

Role = Literal["system", "user", "assistant"]
ROLES = ("system", "user", "assistant")


@dataclass
class Text:
    text: str
    type: str = field(default="text", init=False)


@dataclass
class Image:
    """An image given by a file path or by pixels (H, W, 3) uint8."""

    path: str | None = None
    pixels: np.ndarray | None = field(default=None, repr=False)
    type: str = field(default="image", init=False)

    def load(self) -> np.ndarray:
        """Return the image as an (H, W, 3) uint8 array; a clear error if it cannot be read."""
        if self.pixels is not None:
            return self.pixels
        if self.path is None:
            raise MMDialogError("an Image part has neither a path nor pixels")
        try:
            with PILImage.open(self.path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except FileNotFoundError:
            raise MMDialogError(f"image file not found: {self.path}") from None
        except Exception as e:  # PIL raises many types for broken files
            raise MMDialogError(f"cannot read image {self.path}: {e}") from None
        self.pixels = arr
        return arr

    def content_hash(self) -> str:
        return hashlib.sha1(np.ascontiguousarray(self.load()).tobytes()).hexdigest()


def _media_bytes(kind: str, path: str | None, data: bytes | None) -> bytes:
    if data is not None:
        return data
    if path is None:
        raise MMDialogError(f"this {kind} part has neither a path nor data")
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise MMDialogError(f"{kind} file not found: {path}") from None
    except OSError as e:
        raise MMDialogError(f"cannot read {kind} {path}: {e}") from None


@dataclass
class Audio:
    """An audio clip: a file path, or the bytes of an encoded file (OpenAI's base64 `input_audio`).

    Models with an audio encoder (model.encoders.audio) read it; the dataset formats carry it either way.
    """

    path: str | None = None
    data: bytes | None = field(default=None, repr=False)
    format: str | None = None  # "wav", "mp3", ...; None: the path's suffix
    type: str = field(default="audio", init=False)

    def read_bytes(self) -> bytes:
        return _media_bytes("audio", self.path, self.data)

    def content_hash(self) -> str:
        return hashlib.sha1(self.read_bytes()).hexdigest()


@dataclass
class Video:
    """A video clip given by a file path (animated GIF/PNG/WebP or .npy frames), for models with a video encoder."""

    path: str | None = None
    type: str = field(default="video", init=False)

    def read_bytes(self) -> bytes:
        return _media_bytes("video", self.path, None)

    def content_hash(self) -> str:
        return hashlib.sha1(self.read_bytes()).hexdigest()


Part = Union[Text, Image, Audio, Video]
MEDIA_PARTS: dict[str, type] = {m.name: globals()[m.part] for m in MODALITIES}  # modality -> its Part class


@dataclass
class Turn:
    role: Role
    parts: list[Part]
    weight: float = 1.0  # an assistant turn's loss weight (train.loss_turns=weighted); 0: not trained

    def __post_init__(self):
        if self.role not in ROLES:
            raise MMDialogError(f"turn role must be one of {ROLES}, got {self.role!r}")
        if not (isinstance(self.weight, (int, float)) and self.weight >= 0) or isinstance(self.weight, bool):
            raise MMDialogError(f"turn weight must be a number >= 0, got {self.weight!r}")

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.parts if isinstance(p, Text))

    def media(self, kind: str = "image") -> list[Part]:
        return [p for p in self.parts if p.type == kind]


@dataclass
class Conversation:
    turns: list[Turn] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)

    def add(self, role: Role, *parts: Part | str) -> "Conversation":
        self.turns.append(Turn(role, [Text(p) if isinstance(p, str) else p for p in parts]))
        return self

    def media(self, kind: str = "image") -> list[Part]:
        return [p for t in self.turns for p in t.media(kind)]

    def prefix(self, n_turns: int) -> "Conversation":
        return Conversation(list(self.turns[:n_turns]), dict(self.meta))

    # JSON form used by `/save`, `/load` and the world files' conversations.
    def to_dict(self) -> dict:
        def part(p):
            if isinstance(p, Text):
                return {"type": "text", "text": p.text}
            return {"type": p.type, "path": str(p.path) if p.path else None}

        return {"turns": [{"role": t.role, "parts": [part(p) for p in t.parts], **({"weight": t.weight} if t.weight != 1
                                                                                   else {})} for t in self.turns],
                "meta": self.meta}

    @classmethod
    def from_dict(cls, d: dict, root: str | Path | None = None, where: str = "conversation") -> "Conversation":
        try:
            turns = []
            for i, t in enumerate(d["turns"]):
                parts: list[Part] = []
                for j, p in enumerate(t["parts"]):
                    if p["type"] == "text":
                        parts.append(Text(p["text"]))
                    elif p["type"] in MEDIA_PARTS:
                        path = p["path"]
                        if root is not None and not Path(path).is_absolute():
                            path = str(Path(root) / path)
                        parts.append(MEDIA_PARTS[p["type"]](path=path))
                    else:
                        raise MMDialogError(f"{where}: turn {i} part {j} has unknown type {p['type']!r}")
                turns.append(Turn(t["role"], parts, t.get("weight", 1.0)))
        except KeyError as e:
            raise MMDialogError(f"{where}: missing field {e}") from None
        return cls(turns, dict(d.get("meta", {})))
