"""A chat session that keeps the decoder's KV cache across turns.

Each call feeds only the tokens the cache has not seen yet: the template renders turns 1..N
as a prefix of turns 1..N+1, so the new turn's tokens are exactly the tail of the rendering.
Media are encoded once, keyed by content hash. A generated reply is rolled back out of the
cache and re-fed as rendered text with the next turn, so the cache always holds the same
tokens that re-encoding the whole conversation from scratch would produce.
"""

from __future__ import annotations

import torch

from mmdialog.data.conversation import Conversation, Image, Part, Text
from mmdialog.data.processor import Processor, image_to_tensor
from mmdialog.model import MultimodalLM
from mmdialog.modules.kv_cache import KVCache


class ChatSession:
    def __init__(self, model: MultimodalLM, processor: Processor, *, max_new_tokens: int = 32):
        self.model = model
        self.processor = processor
        self.max_new_tokens = max_new_tokens
        self.media_cache: dict[str, torch.Tensor] = {}  # content hash -> (1, T_img, d_img) encoder output
        self.reset()

    def reset(self) -> None:
        self.conv = Conversation()
        self.cache = KVCache()
        self.cached_ids: list[int] = []  # expanded ids whose keys/values are in the cache
        self.cached_images = 0  # images among them
        self.stats = {"prefill_tokens": 0, "decode_tokens": 0, "images_encoded": 0}

    def add(self, role: str, *parts: Part | str) -> None:
        self.conv.add(role, *parts)

    @torch.no_grad()
    def _encode_images(self, images: list[Image]) -> torch.Tensor:
        out = []
        for im in images:
            key = im.content_hash()
            if key not in self.media_cache:
                pixels = image_to_tensor(im.load(), self.processor.image_size)[None]  # (1, 3, H, W)
                self.media_cache[key] = self.model.encode_media(images=pixels)["image"]
                self.stats["images_encoded"] += 1
            out.append(self.media_cache[key])
        return torch.cat(out)  # (N, T_img, d_img)

    @torch.no_grad()
    def _feed(self, ids: list[int], images: list[Image]) -> torch.Tensor:
        """Run new tokens through the decoder, appending to the cache; returns the last logits (V,)."""
        media = {"image": self._encode_images(images)} if images else None
        x = torch.tensor([ids], dtype=torch.long)
        out = self.model(input_ids=x, cache=self.cache, media_embeds=media, return_logits=True)
        return out.logits[0, -1].float()

    @torch.no_grad()
    def prefill(self) -> torch.Tensor:
        """Bring the cache up to date with the conversation plus the assistant header; returns next-token logits."""
        images = self.conv.media("image")
        ids = self.processor.expand(self.processor.token_ids(self.conv, add_generation_prompt=True), len(images))
        n = len(self.cached_ids)
        if ids[:n] != self.cached_ids:  # a template that rewrote history: start over rather than be wrong
            self.cache, self.cached_ids, self.cached_images, n = KVCache(), [], 0, 0
        logits = self._feed(ids[n:], images[self.cached_images:])
        self.stats["prefill_tokens"] += len(ids) - n
        self.cached_ids, self.cached_images = ids, len(images)
        return logits

    @torch.no_grad()
    def generate(self, commit: bool = True) -> str:
        """Greedy reply to the conversation so far. With commit, the reply is appended as an assistant turn."""
        logits = self.prefill()
        prompt_len = len(self.cached_ids)
        end = self.processor.tokenizer.end_id
        reply: list[int] = []
        for _ in range(self.max_new_tokens):
            nxt = int(logits.argmax())
            if nxt == end:
                break
            reply.append(nxt)
            logits = self._feed([nxt], [])
            self.stats["decode_tokens"] += 1
        self.cache.crop(prompt_len)  # the reply comes back as rendered text with the next turn
        text = self.processor.tokenizer.decode(reply)
        if commit:
            self.conv.add("assistant", Text(text))
        return text

    def ask(self, *parts: Part | str) -> str:
        self.add("user", *parts)
        return self.generate()
