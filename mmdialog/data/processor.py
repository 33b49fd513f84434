"""Conversation -> Example: chat template, tokenizer, placeholder expansion, loss mask, media tensors."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image as PILImage

from mmdialog.data.conversation import Conversation
from mmdialog.data.tokenizer import ChatTokenizer
from mmdialog.errors import MMDialogError

IGNORE = -100


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


def image_to_tensor(pixels: np.ndarray, size: int) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) float in [-1, 1]; resizes with PIL when the size differs."""
    if pixels.ndim != 3 or pixels.shape[2] != 3:
        raise MMDialogError(f"an image must be (H, W, 3) RGB, got shape {tuple(pixels.shape)}")
    if pixels.shape[0] != size or pixels.shape[1] != size:
        pixels = np.asarray(PILImage.fromarray(pixels).resize((size, size), PILImage.BILINEAR))
    x = torch.from_numpy(np.array(pixels, dtype=np.uint8)).permute(2, 0, 1).float()
    return x.div_(127.5).sub_(1.0)


class Processor:
    """Turns a Conversation into exactly what the collator and `MultimodalLM.forward` consume.

    The same processor runs in training, evaluation, chat and serving.
    """

    def __init__(self, tokenizer: ChatTokenizer, *, image_size: int, image_tokens: int, max_length: int = 1024):
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.image_tokens = image_tokens
        self.max_length = max_length

    def token_ids(self, conv: Conversation, add_generation_prompt: bool = False) -> list[int]:
        """Token ids with one placeholder per media item (not yet expanded)."""
        return self.tokenizer.encode(self.tokenizer.render(conv, add_generation_prompt))

    def expand(self, ids: list[int], n_images: int, where: str = "conversation") -> list[int]:
        ph = self.tokenizer.media_ids["image"]
        found = ids.count(ph)
        if found != n_images:
            raise MMDialogError(
                f"{where}: the text holds {found} <|image|> placeholder(s) but {n_images} image(s) were given"
            )
        out: list[int] = []
        for i in ids:
            out.extend([ph] * self.image_tokens if i == ph else [i])
        return out

    def labels_for(self, ids: list[int]) -> list[int]:
        """Supervise assistant replies: every token after <|assistant|> up to and including <|end|>."""
        assistant, end = self.tokenizer.role_ids["assistant"], self.tokenizer.end_id
        labels, inside = [], False
        for i in ids:
            labels.append(i if inside else IGNORE)
            if i == assistant:
                inside = True
            elif i == end:
                inside = False
        return labels

    def images(self, conv: Conversation) -> torch.Tensor | None:
        imgs = conv.media("image")
        if not imgs:
            return None
        return torch.stack([image_to_tensor(im.load(), self.image_size) for im in imgs])  # (N, 3, H, W)

    def __call__(self, conv: Conversation, add_generation_prompt: bool = False, where: str = "conversation") -> Example:
        imgs = conv.media("image")
        ids = self.expand(self.token_ids(conv, add_generation_prompt), len(imgs), where)
        if len(ids) > self.max_length:
            raise MMDialogError(f"{where}: {len(ids)} tokens exceed max_length {self.max_length}")
        labels = self.labels_for(ids)
        if add_generation_prompt:  # the trailing <|assistant|> opens a reply that is not there yet
            labels[-1] = IGNORE
        return Example(torch.tensor(ids), torch.tensor(labels), self.images(conv))
