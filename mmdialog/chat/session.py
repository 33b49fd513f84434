"""A chat session that keeps the decoder's KV cache and the media encodings across turns.

The template renders turns 1..N as a prefix of turns 1..N+1, so a new turn's tokens are the tail
of the rendering and only they are prefilled. More generally, before each reply the session
renders its context (the conversation after the context policy), finds the longest prefix the
cache already holds (same token ids and the same images, by content hash), crops the cache to
it and feeds the rest. That one rule covers every case:

- a new turn: the cache holds everything before it (and the previous reply's tokens, when they
  re-tokenise to what was generated), so only the new turn is fed;
- a policy dropped old rounds or media: the cache is cut where the renderings first differ and
  the remainder re-fed, so the reply is exactly what a fresh session says to the truncated
  conversation;
- undo, retry, fork, a loaded conversation: the same.

Media are encoded once, keyed by content hash, and stay in the turn where they came. Every
public method that changes the session either completes or leaves it exactly as it was.
"""

from __future__ import annotations

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import Iterator

import torch

from mmdialog.chat.policies import Full, Policy
from mmdialog.chat.sampling import Sampler, SamplingParams, TextStream
from mmdialog.data.collate import reader_batch
from mmdialog.data.conversation import Conversation, Image, Part, Text
from mmdialog.data.processor import Processor
from mmdialog.data.tokenizer import TooLong
from mmdialog.errors import MMDialogError
from mmdialog.modalities import by_name
from mmdialog.model import MultimodalLM, decode
from mmdialog.modules.kv_cache import KVCache


@dataclass
class Reply:
    """What one generate call produced, for usage counts and finish reasons."""

    text: str = ""
    token_ids: list[int] = field(default_factory=list)  # generated ids, <|end|> excluded
    finish_reason: str = ""  # "stop" (end token or stop string) or "length" (max_new_tokens or max_seq_len)
    prompt_tokens: int = 0  # expanded tokens of the context, generation prompt included
    cached_tokens: int = 0  # of those, the ones reused from the cache (not prefilled)
    images_encoded: int = 0  # images this reply had to encode (not found in the media cache)
    completion_tokens: int = 0  # tokens sampled, <|end|> included when it ended the reply
    first_token_s: float = 0.0  # seconds from the call to the first sampled token (prefill included)




class ReplyStream:
    """An iterator of text pieces; `reply` is complete once it is exhausted.

    close() before the end abandons the turn: the session goes back to how it was before it.
    """

    def __init__(self, gen: Iterator[str], reply: Reply, abandon):
        self._gen, self.reply, self._abandon = gen, reply, abandon
        self.started = self.finished = False

    def __iter__(self):
        return self

    def __next__(self) -> str:
        self.started = True
        try:
            return next(self._gen)
        except StopIteration:
            self.finished = True
            raise

    def close(self) -> None:
        if not self.started:  # a generator never started runs no finally block when closed
            self.started = self.finished = True
            self._abandon()
        self._gen.close()

    def text(self) -> str:
        """Consume the stream; the whole reply text."""
        for _ in self:
            pass
        return self.reply.text


class ChatSession:
    """Conversation + KV cache + media cache of one dialogue.

    model, processor: what the checkpoint loader returns. policy: see chat/policies.py.
    sampling: the default SamplingParams (greedy); max_new_tokens overrides its field for brevity.
    media_cache: share one dict between sessions of the same model to share encodings.
    lock: held around every model call (the server shares one between concurrent sessions).
    """

    def __init__(self, model: MultimodalLM, processor: Processor, *, max_new_tokens: int | None = None,
                 policy: Policy | None = None, sampling: SamplingParams | None = None,
                 media_cache: dict[str, torch.Tensor] | None = None, lock=None):
        self.model = model
        self.processor = processor
        self.policy = policy or Full()
        self.sampling = (sampling or SamplingParams()).replace(max_new_tokens=max_new_tokens)
        self.media_cache: dict[str, torch.Tensor] = {} if media_cache is None else media_cache  # media_key -> (1, T, d)
        self.lock = lock or contextlib.nullcontext()
        self.banned = processor.tokenizer.never_generated
        self.reset()

    # -- state -------------------------------------------------------------------------------------
    def reset(self) -> None:
        """An empty conversation and cache (encoded media stay cached: they depend only on the image)."""
        self.conv = Conversation()
        self.cache = KVCache()
        self.cached_ids: list[int] = []  # expanded ids whose keys/values are in the cache, in order
        self.cached_media: list[str] = []  # media keys (see media_key) of the media items among them, in order
        self.cached_turns: list[list[int]] = []  # with a user-turn reader: its ids of the cached user turns
        self.stats = {"prefill_tokens": 0, "decode_tokens": 0, "images_encoded": 0, "reused_tokens": 0,
                      "media_encoded": 0}
        self.last: Reply | None = None

    def _snapshot(self) -> dict:
        # KVCache never writes into a tensor in place (update concatenates, crop slices), so copying
        # its lists is a complete snapshot, and a fork can share the tensors.
        return {"turns": list(self.conv.turns), "meta": dict(self.conv.meta), "keys": list(self.cache.keys),
                "values": list(self.cache.values), "media": dict(self.cache.media), "cached_ids": list(self.cached_ids),
                "cached_media": list(self.cached_media), "cached_turns": list(self.cached_turns),
                "stats": dict(self.stats), "last": self.last}

    def _restore(self, s: dict) -> None:
        self.conv.turns, self.conv.meta = s["turns"], s["meta"]
        self.cache.keys, self.cache.values, self.cache.media = s["keys"], s["values"], s["media"]
        self.cached_ids, self.cached_media, self.stats, self.last = s["cached_ids"], s["cached_media"], s["stats"], s["last"]
        self.cached_turns = s["cached_turns"]

    def fork(self) -> "ChatSession":
        """An independent copy: same conversation, policy and sampling; shares the model, media cache and lock.
        Cheap: the cache tensors are shared until either side appends (which copies)."""
        other = copy.copy(self)
        s = self._snapshot()
        other.conv = Conversation(s["turns"], s["meta"])
        other.cache = KVCache()
        other.cache.keys, other.cache.values, other.cache.media = s["keys"], s["values"], s["media"]
        other.cached_ids, other.cached_media, other.stats = s["cached_ids"], s["cached_media"], s["stats"]
        other.cached_turns = s["cached_turns"]
        other.policy = copy.deepcopy(self.policy)
        other.sampling = copy.deepcopy(self.sampling)
        return other

    def load(self, conv: Conversation) -> None:
        """Replace the conversation (e.g. /load); the cache keeps whatever prefix still matches."""
        check = ChatSession.fork(self)  # validate on a throwaway copy: nothing changes on error
        check.conv = Conversation()
        for t in conv.turns:
            check.add(t.role, *t.parts)  # fails now, naming the file or the modality, not at the next reply
        self.conv = Conversation(list(conv.turns), dict(conv.meta))

    def set_policy(self, policy: Policy) -> None:
        self.policy = policy

    # -- conversation edits ------------------------------------------------------------------------
    def add(self, role: str, *parts: Part | str) -> None:
        """Append a turn; an image that cannot be read, or media the model has no encoder for, is an error now."""
        for p in parts:
            kind = getattr(p, "type", "text")
            if kind != "text" and kind not in self.model.encoders:
                raise MMDialogError(f"this model cannot take {kind} input (it has encoders for: "
                                    f"{', '.join(self.model.encoders)})")
            if isinstance(p, Image):
                p.load()
            elif kind != "text":
                p.content_hash()  # reads the file: a missing one is an error now
        self.conv.add(role, *parts)

    def undo(self) -> int:
        """Roll back the last round: the last user turn and everything after it. Returns turns removed."""
        idx = [i for i, t in enumerate(self.conv.turns) if t.role == "user"]
        if not idx:
            raise MMDialogError("nothing to undo: the conversation has no user turn")
        removed = len(self.conv.turns) - idx[-1]
        self.conv.turns = self.conv.turns[: idx[-1]]
        return removed

    def _pop_reply(self) -> None:
        if not self.conv.turns or self.conv.turns[-1].role != "assistant":
            raise MMDialogError("nothing to regenerate: the last turn is not an assistant reply")
        self.conv.turns = self.conv.turns[:-1]

    # -- generation --------------------------------------------------------------------------------
    def ask(self, *parts: Part | str, sampling: SamplingParams | None = None) -> str:
        """Add a user turn and return the reply (appended as an assistant turn)."""
        return self.stream(*parts, sampling=sampling).text()

    def stream(self, *parts: Part | str, sampling: SamplingParams | None = None) -> ReplyStream:
        """Add a user turn and stream the reply's text pieces. Errors (bad image, context too long) raise
        here, before any text, and leave the session as it was; so does closing the stream early."""
        before = self._snapshot()
        try:
            self.add("user", *parts)
        except BaseException:
            self._restore(before)
            raise
        return self._start(before, sampling, commit=True)

    def regenerate(self, sampling: SamplingParams | None = None) -> ReplyStream:
        """Replace the last assistant reply with a new one (the same one under greedy decoding)."""
        before = self._snapshot()
        self._pop_reply()
        return self._start(before, sampling, commit=True)

    def generate(self, commit: bool = True, sampling: SamplingParams | None = None) -> str:
        """Reply to the conversation as it stands. With commit, the reply is appended as an assistant turn."""
        return self._start(self._snapshot(), sampling, commit=commit).text()

    def generate_stream(self, commit: bool = True, sampling: SamplingParams | None = None) -> ReplyStream:
        """generate() as a stream of text pieces; the prefill runs now, so its errors raise here."""
        return self._start(self._snapshot(), sampling, commit=commit)

    def context(self) -> Conversation:
        """The conversation the model sees: the whole one after the context policy."""
        return self.policy.apply(self.conv, self.count_tokens)

    def count_tokens(self, conv: Conversation) -> int:
        """Expanded prompt tokens of a conversation, the generation prompt included."""
        ids = self.processor.token_ids(conv, add_generation_prompt=True)
        return len(ids) + sum(len(conv.media(m)) * (self.processor.media_tokens(m) - 1)
                              for m in self.processor.media if conv.media(m))

    def _start(self, before: dict, sampling: SamplingParams | None, commit: bool) -> ReplyStream:
        params = (sampling or self.sampling).validate()
        t0 = time.perf_counter()
        try:
            reply = Reply()
            logits = self.prefill(reply)
        except BaseException:
            self._restore(before)
            raise
        return ReplyStream(self._decode(before, params, logits, reply, commit, t0), reply,
                           lambda: self._restore(before))

    def _decode(self, before: dict, params: SamplingParams, logits: torch.Tensor, reply: Reply,
                commit: bool, t0: float) -> Iterator[str]:
        tok = self.processor.tokenizer
        sampler = Sampler(params, self.banned, end_id=tok.end_id)  # never an empty reply
        stream = TextStream(tok.decode, params.stop)
        room = self.model.decoder.max_seq_len - len(self.cached_ids)  # positions left after the prompt
        done = False

        def feed(rows: list[int], tokens: list[int]) -> torch.Tensor:  # (1, V) logits after one more token
            logits = self._feed(tokens, [])[None]
            self.cached_ids += tokens
            self.stats["decode_tokens"] += 1
            return logits

        try:
            ids = reply.token_ids
            reply.finish_reason = "length"
            steps = decode(logits[None], sampler.rows, feed, max_new_tokens=min(params.max_new_tokens, room),
                           end_id=tok.end_id)
            for step, [(_, nxt)] in enumerate(steps):
                if step == 0:
                    reply.first_token_s = time.perf_counter() - t0
                reply.completion_tokens += 1
                if nxt == tok.end_id:
                    reply.finish_reason = "stop"
                    break
                ids.append(nxt)
                piece = stream.push(ids)
                if stream.stopped:
                    reply.finish_reason = "stop"
                    if piece:
                        yield piece
                    break
                if piece:
                    yield piece
            tail = stream.flush()
            if tail:
                yield tail
            reply.text = stream.text
            done = True
        finally:
            if not done:  # an error, or the consumer stopped listening: the turn never happened
                self._restore(before)
        # The reply's tokens stay in the cache; the next prefill keeps them if the reply's text
        # re-tokenises to the same ids, else crops where they differ.
        self.last = reply
        if commit:
            self.conv.add("assistant", Text(reply.text))

    @staticmethod
    def media_key(part: Part) -> str:
        """An item's key in the media caches: its content hash (prefixed by the modality, images excepted)."""
        return part.content_hash() if part.type == "image" else f"{part.type}:{part.content_hash()}"

    @torch.no_grad()
    def _encode_media(self, items: list[Part]) -> dict[str, torch.Tensor]:
        """Encodings of media items by modality, each (N_m, ...) in order of appearance; cached by content."""
        out: dict[str, list[torch.Tensor]] = {}
        for p in items:
            key = self.media_key(p)
            enc = self.media_cache.get(key)  # one lookup: a shared cache may evict between two
            if enc is None:
                x = self.processor.media[p.type].transform(p, p.type)[None]  # (1, ...)
                device = next(self.model.parameters()).device
                with self.lock:
                    enc = self.model.encode_media(**{by_name(p.type).key: x.to(device)})[p.type]
                self.media_cache[key] = enc
                self.stats["media_encoded"] += 1
                if p.type == "image":
                    self.stats["images_encoded"] += 1
            out.setdefault(p.type, []).append(enc)
        return {m: torch.cat(encs) for m, encs in out.items()}

    @torch.no_grad()
    def prefill(self, reply: Reply | None = None) -> torch.Tensor:
        """Bring the cache up to date with the context plus the assistant header; returns next-token logits (V,)."""
        ctx = self.context()
        items = _media_items(ctx)
        ids, hashes = self.render(ctx, limit=True)
        n, m = self.reusable_prefix(ids, hashes)
        n = min(n, len(ids) - 1)  # feed at least one token: its logits are the next-token distribution
        turns, index = self.processor.reader_inputs(ctx, ids) if self.processor.reader is not None else ([], [])
        if index:  # a user turn's tokens carry its whole text's reading: reused only when the whole turn is the same
            for p in range(n):
                r = index[p]
                if r >= 0 and (r >= len(self.cached_turns) or self.cached_turns[r] != turns[r]):
                    n = p
                    break
        media_ids = self.processor.tokenizer.media_ids
        m = min(m, sum(ids[:n].count(media_ids[k]) // self.processor.media_tokens(k) for k in self.processor.media))
        encoded = self.stats["images_encoded"]
        self.cache.crop(n)
        self.cached_ids, self.cached_media = self.cached_ids[:n], self.cached_media[:m]
        logits = self._feed(ids[n:], items[m:], (turns, index[n:]) if index else None)
        self.stats["prefill_tokens"] += len(ids) - n
        self.stats["reused_tokens"] += n
        self.cached_ids, self.cached_media, self.cached_turns = list(ids), hashes, turns
        if reply is not None:
            reply.prompt_tokens, reply.cached_tokens = len(ids), n
            reply.images_encoded = self.stats["images_encoded"] - encoded
        return logits

    def render(self, conv: Conversation, limit: bool = False) -> tuple[list[int], list[str]]:
        """Expanded token ids of a conversation plus the assistant header, and its media items' keys in order.
        limit: refuse a conversation that leaves no room for a reply (before tokenising all of an over-long one)."""
        max_len = self.model.decoder.max_seq_len
        try:
            ids = self.processor.expanded_ids(conv, add_generation_prompt=True, max_tokens=max_len - 1 if limit else None)
        except TooLong as e:
            raise MMDialogError(f"the conversation needs at least {e.at_least} tokens, over the model's max_seq_len "
                                f"{max_len}; choose a context policy such as last_k or token_budget") from None
        return ids, [self.media_key(p) for p in _media_items(conv)]

    @property
    def nbytes(self) -> int:
        """Memory the session holds: its KV cache, the cached ids, and the conversation (text, pixels, audio)."""
        held = self.cache.nbytes + 36 * len(self.cached_ids) + sum(len(k) for k in self.cached_media)  # ~36 B an int
        return held + sum(_part_bytes(p) for t in self.conv.turns for p in t.parts)

    def reusable_prefix(self, ids: list[int], hashes: list[str]) -> tuple[int, int]:
        """(n, m): the first n cached positions, holding the first m media items, are valid for `ids`."""
        old = self.cached_ids
        n = 0
        limit = min(len(old), len(ids), self.cache.seq_len)
        while n < limit and old[n] == ids[n]:
            n += 1
        # item i occupies the i-th run of T_k placeholder tokens of its modality k; keep only items that are
        # whole and the same
        runs = {self.processor.tokenizer.media_ids[k]: self.processor.media_tokens(k) for k in self.processor.media}
        m, i = 0, 0
        while i < n:
            T = runs.get(ids[i])
            if T is not None:
                if i + T > n or m >= len(self.cached_media) or m >= len(hashes) or self.cached_media[m] != hashes[m]:
                    return i, m
                m += 1
                i += T
            else:
                i += 1
        return n, m

    @torch.no_grad()
    def _feed(self, ids: list[int], items: list[Part],
              reader: tuple[list[list[int]], list[int]] | None = None) -> torch.Tensor:
        """Run new tokens (and the media items whose placeholders they hold) through the fusion and decoder,
        appending to the cache (and to the fusion's memory in it); returns the next-token logits (V,).
        reader: (the reader ids of every user turn of the rendering, the turn index of each new token)."""
        media = self._encode_media(items) if items else {}
        device = next(self.model.parameters()).device
        x = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T_new)
        extra = {} if reader is None else {k: v.to(device) for k, v in reader_batch([reader], len(ids)).items()}
        with self.lock:
            # next-token logits at the last position only: the lm head is the widest matmul of a small model
            out = self.model(x, media_embeds=media, cache=self.cache, logits_to_keep=1, **extra)  # logits (1, 1, V)
        return out.logits[0, -1].float()  # (V,)


def _part_bytes(p: Part) -> int:
    """What a part holds in memory, roughly: its text, pixels or encoded audio, and ~64 bytes of object."""
    if isinstance(p, Text):
        return 64 + len(p.text)
    pixels = getattr(p, "pixels", None)
    return 64 + (pixels.nbytes if pixels is not None else len(getattr(p, "data", None) or b""))


def _media_items(conv: Conversation) -> list[Part]:
    """Every media part of a conversation in order of appearance, whatever its modality."""
    return [p for t in conv.turns for p in t.parts if p.type != "text"]
