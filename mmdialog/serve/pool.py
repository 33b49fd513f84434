"""Sessions kept across requests, so that a client resending the whole history pays only for the new turn.

OpenAI clients are stateless: every request carries the whole conversation. The pool keeps the
chat sessions of recent conversations; a request takes a fork of the session whose cache holds
the longest prefix of the request's tokens (the same token ids and the same images by content
hash), and the session reuses the cache up to the first token that differs and prefills the rest
(see ChatSession.prefill). Reuse is therefore only ever of an identical prefix: two clients share
cached work exactly where their conversations are the same, never beyond.

Entries are bounded by a memory budget (bytes of KV cache) with least-recently-used eviction. A
finished request's session replaces the entry it was forked from when it extends it (the new
cache holds everything the old one did), so a growing conversation keeps one entry.
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
    last_used: float = field(default_factory=time.monotonic)


class MediaCache(OrderedDict):
    """Encoded media by content hash, least recently used dropped past `max_items`; safe across threads."""

    def __init__(self, max_items: int = 256):
        super().__init__()
        self.max_items = max_items
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            if key not in self:
                return default
            self.move_to_end(key)
            return super().__getitem__(key)

    def __setitem__(self, key, value):
        with self._lock:
            super().__setitem__(key, value)
            self.move_to_end(key)
            while len(self) > self.max_items:
                self.popitem(last=False)


class SessionPool:
    """Thread-safe store of sessions: checkout() a session for a request's conversation, checkin() it after."""

    def __init__(self, make_session, budget_bytes: int = 512 * 2**20):
        self.make_session = make_session  # () -> a fresh ChatSession
        self.budget_bytes = budget_bytes
        self.entries: list[Entry] = []
        self.lock = threading.Lock()
        self.hits = self.misses = 0

    def checkout(self, conv: Conversation) -> tuple[ChatSession, Entry | None]:
        """A session whose conversation is `conv`, forked from the entry whose cache holds the longest
        prefix of its tokens (same ids, same images), as vLLM's prefix caching matches blocks."""
        session = self.make_session()
        ids, hashes = session.render(conv)  # tokenising outside the lock
        with self.lock:
            best, best_len = None, 0
            for e in self.entries:
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

    def checkin(self, session: ChatSession, source: Entry | None) -> None:
        """Keep a session whose reply is done, replacing `source` if it extends it; evict to the budget."""
        keys = turn_keys(session.conv)
        entry = Entry(session, keys, session.cache.nbytes)
        with self.lock:
            self.entries = [e for e in self.entries if not _extends(keys, e.keys)]  # subsumed (source included)
            if entry.nbytes <= self.budget_bytes:
                self.entries.append(entry)
            self.entries.sort(key=lambda e: e.last_used)
            while self.entries and self.nbytes > self.budget_bytes:
                self.entries.pop(0)  # least recently used first

    @property
    def nbytes(self) -> int:
        return sum(e.nbytes for e in self.entries)

    def stats(self) -> dict:
        with self.lock:
            return {"sessions": len(self.entries), "cache_bytes": self.nbytes, "budget_bytes": self.budget_bytes,
                    "hits": self.hits, "misses": self.misses}


def _extends(keys: list[str], old: list[str]) -> bool:
    """The conversation with `keys` starts with the whole conversation with `old`."""
    return len(old) <= len(keys) and keys[len(old) - 1] == old[-1] if old else True
