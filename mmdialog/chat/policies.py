"""Context policies: which part of a long conversation the model sees when it replies.

A policy maps the session's whole conversation (what the user sees and saves) to the context
conversation that is rendered and fed to the model. It is a pure function of the conversation,
so "the reply equals what a fresh session says to the truncated conversation" is testable:
`policy.apply(conv, count)` *is* that truncated conversation. The session keeps the cache
positions both renderings share and prefills only the rest (see ChatSession.prefill).

Units: a *round* is a user turn plus the assistant turns that answer it. Policies drop whole
rounds from the oldest on, never half a round, and never the system prompt or the round being
answered. Dropping media removes an image part (and so its placeholder) while keeping the text
of its turn: the template then renders no placeholder without its media.
"""

from __future__ import annotations

from typing import Callable

from mmdialog.data.conversation import Conversation, Image, Text, Turn
from mmdialog.errors import MMDialogError
from mmdialog.registry import Registry

POLICIES = Registry("context policy")

TokenCount = Callable[[Conversation], int]  # expanded prompt tokens of a conversation, generation prompt included


def split_rounds(conv: Conversation) -> tuple[list[Turn], list[list[Turn]]]:
    """(leading system turns, rounds); a round starts at each user turn. Turns before the first user turn
    that are not system turns (an assistant greeting) form a round of their own."""
    turns = conv.turns
    i = 0
    while i < len(turns) and turns[i].role == "system":
        i += 1
    head, rounds = list(turns[:i]), []
    for t in turns[i:]:
        if t.role == "user" or not rounds:
            rounds.append([t])
        else:
            rounds[-1].append(t)
    return head, rounds


def first_kept(n_rounds: int, keep: int, step: int) -> int:
    """Index of the first round kept when at least `keep` of `n_rounds` must stay and the cut moves `step` rounds
    at a time. step 1 keeps exactly `keep`; a larger step keeps between keep and keep + step - 1 rounds, and
    the cut (and so the re-prefill after it) happens only every `step` rounds: the cache is reused in between."""
    if n_rounds <= keep:
        return 0
    return (n_rounds - keep) // step * step


def join(head: list[Turn], rounds: list[list[Turn]], meta: dict) -> Conversation:
    return Conversation(head + [t for r in rounds for t in r], dict(meta))


class Policy:
    """Base: the whole conversation. Subclasses override apply(); `name` and `arg` describe them in words."""

    name = "full"

    def apply(self, conv: Conversation, count: TokenCount | None = None) -> Conversation:
        return conv

    def describe(self) -> str:
        return self.name


@POLICIES.register("full")
class Full(Policy):
    """Everything; the decoder's max_seq_len is the limit (a clear error past it)."""

    def __init__(self):
        pass


@POLICIES.register("last_k")
class LastK(Policy):
    """The system prompt and the last k rounds (the round being answered counts as one).

    step > 1 drops old rounds `step` at a time (keeping k to k + step - 1 rounds), so that the cache
    survives the turns between two cuts; step 1 re-prefills the window on every turn once it slides.
    """

    name = "last_k"

    def __init__(self, k: int = 4, step: int = 1):
        if not isinstance(k, int) or k < 1:
            raise MMDialogError(f"last_k needs k >= 1 rounds, got {k!r}")
        self.k, self.step = k, _step(step)

    def apply(self, conv, count=None):
        head, rounds = split_rounds(conv)
        start = first_kept(len(rounds), self.k, self.step)
        return conv if start == 0 else join(head, rounds[start:], conv.meta)

    def describe(self):
        return f"last_k {self.k}" + (f" {self.step}" if self.step > 1 else "")


@POLICIES.register("token_budget")
class TokenBudget(Policy):
    """Fit the prompt into `budget` tokens (generation prompt included; keep room for the reply yourself).

    With drop_media_first, images of old rounds go first, oldest first, their text kept; then whole
    rounds, oldest first. The round being answered is never cut: if it alone is over budget, that is
    an error naming both numbers.
    """

    name = "token_budget"

    def __init__(self, budget: int = 512, drop_media_first: bool = True):
        if not isinstance(budget, int) or budget < 1:
            raise MMDialogError(f"token_budget needs a budget >= 1 token, got {budget!r}")
        self.budget = budget
        self.drop_media_first = drop_media_first

    def apply(self, conv, count=None):
        if count is None:
            raise MMDialogError("the token_budget policy needs a token counter (the session passes one)")
        if count(conv) <= self.budget:
            return conv
        head, rounds = split_rounds(conv)
        rounds = [list(r) for r in rounds]
        if self.drop_media_first:
            for r in range(len(rounds) - 1):  # oldest first; never the round being answered
                for i, t in enumerate(rounds[r]):
                    while any(isinstance(p, Image) for p in t.parts):
                        j = next(j for j, p in enumerate(t.parts) if isinstance(p, Image))
                        t = Turn(t.role, t.parts[:j] + t.parts[j + 1:])
                        rounds[r][i] = t
                        if count(join(head, rounds, conv.meta)) <= self.budget:
                            return join(head, rounds, conv.meta)
        while len(rounds) > 1:
            rounds.pop(0)
            if count(join(head, rounds, conv.meta)) <= self.budget:
                return join(head, rounds, conv.meta)
        n = count(join(head, rounds, conv.meta))
        raise MMDialogError(f"the last message alone needs {n} tokens, over the token_budget of {self.budget}")

    def describe(self):
        return f"token_budget {self.budget}" + ("" if self.drop_media_first else " (media kept)")


@POLICIES.register("summary")
class Summary(Policy):
    """The last `keep` rounds verbatim; older rounds replaced by one system turn that summarises them.

    The default summary is extractive: each old round's user text and reply, cut to `words` words
    each, newest kept when the whole exceeds `max_chars`, images noted as "[image]". Pass
    `summarize(turns) -> str` for a model-written one (it must be deterministic for the cache to help).
    """

    name = "summary"

    def __init__(self, keep: int = 4, step: int = 1, words: int = 12, max_chars: int = 400,
                 summarize: Callable[[list[Turn]], str] | None = None):
        if not isinstance(keep, int) or keep < 1:
            raise MMDialogError(f"summary needs keep >= 1 rounds, got {keep!r}")
        self.keep, self.step, self.words, self.max_chars = keep, _step(step), words, max_chars
        self.summarize = summarize or self.extractive

    def extractive(self, turns: list[Turn]) -> str:
        lines = []
        for t in turns:
            if t.role == "system":
                continue
            words = t.text.split()
            text = " ".join(words[: self.words]) + (" ..." if len(words) > self.words else "")
            media = "[image] " * len(t.media("image"))
            lines.append(f"{t.role}: {media}{text}".strip())
        out = ""
        for line in reversed(lines):  # newest first, so the most recent history survives the cut
            if len(out) + len(line) + 1 > self.max_chars:
                break
            out = line + ("\n" + out if out else "")
        return out

    def apply(self, conv, count=None):
        head, rounds = split_rounds(conv)
        start = first_kept(len(rounds), self.keep, self.step)
        if start == 0:
            return conv
        old = [t for r in rounds[:start] for t in r]
        summary = Turn("system", [Text("Earlier in this conversation:\n" + self.summarize(old))])
        return join(head + [summary], rounds[start:], conv.meta)

    def describe(self):
        return f"summary {self.keep}" + (f" {self.step}" if self.step > 1 else "")


def _step(step) -> int:
    if not isinstance(step, int) or step < 1:
        raise MMDialogError(f"a policy's step must be >= 1 rounds, got {step!r}")
    return step


def make_policy(name: str, *args: str | int | None) -> Policy:
    """A policy from its name and optional whole numbers, as `/policy NAME [ARG [STEP]]` and
    `--policy NAME[:ARG[:STEP]]` give them: last_k K [STEP], token_budget TOKENS, summary KEEP [STEP]."""
    cls = POLICIES.get(name)
    args = [a for a in args if a is not None and a != ""]
    most = {Full: 0, TokenBudget: 1}.get(cls, 2)
    if len(args) > most:
        raise MMDialogError(f"the {name} policy takes at most {most} number(s), got {' '.join(map(str, args))}")
    try:
        numbers = [int(a) for a in args]
    except (TypeError, ValueError):
        raise MMDialogError(f"the {name} policy takes whole numbers, got {' '.join(map(str, args))}") from None
    return cls(*numbers)


def parse_policy(spec: str) -> Policy:
    """'full', 'last_k:4', 'last_k:4:2', 'token_budget:300', 'summary:2' (spaces work as well as colons)."""
    name, *args = spec.replace(" ", ":").split(":")
    return make_policy(name.strip(), *[a.strip() for a in args])
