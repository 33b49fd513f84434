"""Sessions kept across requests, so that a client resending the whole history pays only for the new turn.

OpenAI clients are stateless: every request carries the whole conversation. The pool keeps the
chat sessions of recent conversations; a request takes a fork of the session whose cache holds
the longest prefix of the request's tokens (the same token ids and the same images by content
hash), and the session reuses the cache up to the first token that differs and prefills the rest
(see ChatSession.prefill). Reuse is therefore only ever of an identical prefix.

Reuse stays within a tenant: a request is served only from sessions (and encoded images) of
requests made with the same API key and the same cache salt (the request's `cache_salt` and
`user` fields). Otherwise the reused-token count, or the time a reply takes, would tell one
client a token at a time what another one sent (a system prompt with a secret in it, say).

Everything the pool holds counts against one memory budget: each session's KV cache, its token
ids and its conversation (the text and the images, which the server keeps at the encoder's input
size), and the encoded images. Sessions go least recently used first; the encodings keep at
most a quarter of the budget. A finished request's session replaces the entry it was forked from
when it extends it (the new cache holds everything the old one did), so a growing conversation
keeps one entry.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from mmdialog.chat.session import ChatSession
from mmdialog.data.conversation import Conversation, Image


def turn_keys(conv: Conversation) -> list[str]:
    """keys[i] identifies turns[:i + 1]: a hash chain over each turn's role, texts and image contents."""
    keys, h = [], hashlib.sha256()
    for t in conv.turns:
        h.update(t.role.encode() + b"\0")
        for p in t.parts:
            if isinstance(p, Image):
                h.update(b"image:" + p.content_hash().encode() + b"\0")
            else:
                h.update(b"text:" + getattr(p, "text", "").encode() + b"\0")
        h.update(b"\1")
        keys.append(h.copy().hexdigest())
    return keys


@dataclass
class Entry:
    session: ChatSession
    keys: list[str]
    nbytes: int
    tenant: str = ""
    last_used: float = field(default_factory=time.monotonic)


class MediaCache:
    """Encoded media by (tenant, content hash), least recently used dropped past `max_bytes`; safe across
    threads. `view(tenant)` is the dict a session of that tenant reads and writes."""

    def __init__(self, max_bytes: int = 128 * 2**20):
        self.max_bytes = max_bytes
        self.items: OrderedDict[tuple[str, str], object] = OrderedDict()
        self.nbytes = 0
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            if key not in self.items:
                return default
            self.items.move_to_end(key)
            return self.items[key]

    def put(self, key, value) -> None:
        size = _size(value)
        with self._lock:
            if key in self.items:
                self.nbytes -= _size(self.items.pop(key))
            self.items[key] = value
            self.nbytes += size
            while self.items and self.nbytes > self.max_bytes:
                self.nbytes -= _size(self.items.popitem(last=False)[1])

    def __len__(self) -> int:
        return len(self.items)

    def view(self, tenant: str) -> "TenantMedia":
        return TenantMedia(self, tenant)


class TenantMedia:
    """One tenant's part of a MediaCache, as the dict ChatSession uses: get(key) and [key] = value."""

    def __init__(self, cache: MediaCache, tenant: str):
        self.cache, self.tenant = cache, tenant

    def get(self, key, default=None):
        return self.cache.get((self.tenant, key), default)

    def __setitem__(self, key, value) -> None:
        self.cache.put((self.tenant, key), value)


def _size(t) -> int:
    return t.numel() * t.element_size()


class SessionPool:
    """Thread-safe store of sessions: checkout() a session for a request's conversation, checkin() it after.

    make_session(media) -> a fresh ChatSession whose media cache is `media` (a TenantMedia).
    budget_bytes: for the sessions and the encoded media together (see the module's docstring)."""

    def __init__(self, make_session, budget_bytes: int = 512 * 2**20):
        self.make_session = make_session
        self.budget_bytes = budget_bytes
        self.media = MediaCache(budget_bytes // 4)
        self.entries: list[Entry] = []
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    def checkout(self, conv: Conversation, tenant: str = "") -> tuple[ChatSession, Entry | None]:
        """A session whose conversation is `conv`, forked from the tenant's entry whose cache holds the longest
        prefix of its tokens (same ids, same images), as vLLM's prefix caching matches blocks. A conversation
        that leaves the model no room for a reply is refused here (MMDialogError) before it is all tokenised."""
        session = self.make_session(self.media.view(tenant))
        ids, hashes = session.render(conv, limit=True)  # tokenising outside the lock
        with self.lock:
            best, best_len = None, 0
            for e in self.entries:
                if e.tenant != tenant:
                    continue
                n, _ = e.session.reusable_prefix(ids, hashes)
                if n > best_len or (n == best_len and n and e.last_used > best.last_used):
                    best, best_len = e, n
            if best is not None:
                best.last_used = time.monotonic()
                session = best.session.fork()
                self.hits += 1
            else:
                self.misses += 1
        session.conv = Conversation(list(conv.turns), dict(conv.meta))
        return session, best

    def checkin(self, session: ChatSession, source: Entry | None, tenant: str = "") -> None:
        """Keep a session whose reply is done, replacing `source` if it extends it; evict to the budget."""
        keys = turn_keys(session.conv)
        entry = Entry(session, keys, session.nbytes, tenant)
        with self.lock:
            # subsumed entries of the same tenant (source included) give way
            self.entries = [e for e in self.entries if e.tenant != tenant or not _extends(keys, e.keys)]
            if entry.nbytes <= self.budget_bytes - self.media.nbytes:
                self.entries.append(entry)
            self.entries.sort(key=lambda e: e.last_used)
            while self.entries and self.nbytes > self.budget_bytes:
                self.entries.pop(0)  # least recently used first

    @property
    def session_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    @property
    def nbytes(self) -> int:
        """Everything the pool holds: sessions and encoded media."""
        return self.session_bytes + self.media.nbytes

    def stats(self) -> dict:
        with self.lock:
            return {"sessions": len(self.entries), "cache_bytes": self.nbytes, "budget_bytes": self.budget_bytes,
                    "session_bytes": self.session_bytes, "media_bytes": self.media.nbytes,
                    "media_items": len(self.media), "hits": self.hits, "misses": self.misses}


def _extends(keys: list[str], old: list[str]) -> bool:
    """The conversation with `keys` starts with the whole conversation with `old`."""
    return len(old) <= len(keys) and keys[len(old) - 1] == old[-1] if old else True
