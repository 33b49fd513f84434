"""What the model sees when a question is put to it: the history (gold, none, the last n rounds, shuffled,
a chat context policy) and whether it sees the media.

A context builder turns one evaluation record into `Sequence`s: conversations whose assistant turns carry the
gold answers, plus which assistant turns are scored and as which round. Teacher forcing scores every
marked turn of a sequence in one forward pass, so a context that is the same for every round (the gold
history, the gold history without the image) is ONE sequence per dialogue; a context that differs per
round (no history, last n, shuffled, a policy) is one short sequence per scored round.

The image always opens the context (the first user turn), except under `no_media`, so that every
ablation changes exactly one thing: which earlier rounds are there, in which order, or the image.

    no_history        [image, question r] -> gold answer r
    last_n (n)        [image, question r-n] answer r-n ... question r -> gold answer r
    shuffled_history  the rounds 0..r-1 in a seeded random order, then question r
    no_media          the gold history without the image (one sequence per dialogue)
    policy            the chat policy (last_k, token_budget, summary) applied to the gold history

Records. A world record (data/worlds/shapes) has an "image" and "rounds" of {question, answer, ...}; its
image opens round 0. A record read from a dataset file (eval/datafile.py) has no "image": each round holds
the user turn's own parts under "parts" (text and media, media in any round), and the record may hold a
"system" turn. One rule covers both when history is dropped or reordered: the media of every earlier
round are kept, in order, at the start of the context (the world's image is such a medium), so that the
history ablations change only which earlier text is there, and `no_media` only the media.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from mmdialog.chat.policies import Policy
from mmdialog.data.conversation import Conversation, Image, Part, Text, Turn


@dataclass
class Sequence:
    """One conversation to score; scored[k] = (index among its assistant turns, round of the record)."""

    id: str
    conv: Conversation
    scored: list[tuple[int, int]] = field(default_factory=list)
    gold_prefix: bool = False  # the gold conversation cut after its last round: scored as the gold history is


def scored_rounds(record: dict) -> list[int]:
    return [rd["round"] for rd in record["rounds"] if rd.get("scored", True)]


def user_parts(record: dict, r: int, image: Image | None = None) -> list[Part]:
    """The user turn of round r as the record has it: its own parts (a file record), or its question with
    the image opening round 0 (a world record)."""
    rd = record["rounds"][r]
    parts = list(rd["parts"]) if "parts" in rd else [Text(rd["question"])]
    return [image, *parts] if r == 0 and image is not None else parts


def _text_only(parts: list[Part]) -> list[Part]:
    return [p for p in parts if isinstance(p, Text)]


def _conversation(record: dict, rounds: list[int], image: Image | None, *, media: bool = True,
                  answer: bool = True) -> Conversation:
    """The system turn (if any), then user/assistant turns of `rounds` in that order. In the gold order
    (0, 1, .., r) each round keeps its own media; otherwise the media of every round before the last one
    listed move, in their order, to the start of the first user turn. media=False: no media at all.
    answer=False: the last round's user turn without its reply."""
    conv = Conversation()
    if record.get("system"):
        conv.turns.append(Turn("system", list(record["system"]) if media else _text_only(record["system"])))
    last = rounds[-1] if rounds else 0
    in_order = rounds == list(range(len(rounds)))
    moved = [] if in_order or not media else \
        [p for k in range(last) for p in user_parts(record, k, image) if not isinstance(p, Text)]
    for i, k in enumerate(rounds):
        parts = user_parts(record, k, image)
        if not media or (moved and k != last):
            parts = _text_only(parts)
        if i == 0 and moved:
            parts = moved + parts
        conv.turns.append(Turn("user", parts))
        if answer or k != last:
            conv.turns.append(Turn("assistant", [Text(record["rounds"][k]["answer"])]))
    return conv


class Context:
    """Base: the gold history, one sequence per dialogue with every scored round marked."""

    name = "gold_history"
    per_round = False
    uses_image = True

    def sequences(self, record: dict, image: Image | None) -> list[Sequence]:
        conv = _conversation(record, list(range(len(record["rounds"]))), image, media=self.uses_image)
        return [Sequence(record["id"], conv, [(r, r) for r in scored_rounds(record)])]

    def history(self, record: dict, r: int) -> list[int]:
        """The earlier rounds (in order of appearance) the context of round r holds."""
        return list(range(r))


class NoMedia(Context):
    name = "no_media"
    uses_image = False


class PerRound(Context):
    """A context built separately for every scored round from the rounds `history(record, r)` names."""

    per_round = True

    def sequences(self, record: dict, image: Image | None) -> list[Sequence]:
        out = []
        for r in scored_rounds(record):  # round 0 has no history: its context is the gold one
            kept = self.history(record, r) + [r]
            conv = _conversation(record, kept, image, media=self.uses_image)
            out.append(Sequence(record["id"], conv, [(len(kept) - 1, r)],
                                gold_prefix=self.uses_image and kept == list(range(r + 1))))
        return out


class LastN(PerRound):
    """The last n rounds before the question (n = 0: no history), the image first."""

    def __init__(self, n: int):
        self.n = n
        self.name = "no_history" if n == 0 else f"last_{n}"

    def history(self, record: dict, r: int) -> list[int]:
        return list(range(max(0, r - self.n), r))


class Shuffled(PerRound):
    """Every earlier round, in an order drawn from (seed, dialogue id, round): the same set, another order."""

    name = "shuffled_history"

    def __init__(self, seed: int = 0):
        self.seed = seed

    def history(self, record: dict, r: int) -> list[int]:
        order = list(range(r))
        rng = random.Random(f"{self.seed}/{record['id']}/{r}")
        if r > 1:
            while order == sorted(order):  # a real reordering, never the identity
                rng.shuffle(order)
        return order


class WithPolicy(PerRound):
    """A chat context policy (mmdialog.chat.policies) applied to the gold history before each question,
    as a ChatSession with that policy would apply it; `count` counts a conversation's prompt tokens."""

    def __init__(self, policy: Policy, count: Callable[[Conversation], int], name: str | None = None):
        self.policy, self.count = policy, count
        self.name = name or f"policy {policy.describe()}"

    def sequences(self, record: dict, image: Image | None) -> list[Sequence]:
        out = []
        for r in scored_rounds(record):
            if r == 0:
                continue
            # up to the question, as the session holds it before replying
            conv = _conversation(record, list(range(r + 1)), image, answer=False)
            ctx = self.policy.apply(conv, self.count)
            ctx = Conversation(list(ctx.turns) + [Turn("assistant", [Text(record["rounds"][r]["answer"])])],
                               dict(ctx.meta))
            n_assistant = sum(t.role == "assistant" for t in ctx.turns)
            out.append(Sequence(record["id"], ctx, [(n_assistant - 1, r)]))
        return out


ABLATIONS: dict[str, Callable[[], Context]] = {
    "no_history": lambda: LastN(0),
    "last_1": lambda: LastN(1),
    "last_2": lambda: LastN(2),
    "last_4": lambda: LastN(4),
    "shuffled_history": lambda: Shuffled(0),
    "no_media": NoMedia,
}


def record_image(record: dict, world_dir: str | Path | None) -> Image | None:
    """A world record's image as one Image part: its pixels are read once and shared by all its sequences.
    None for a file record (its media are in its rounds' parts)."""
    if "image" not in record:
        return None
    return Image(path=str(Path(world_dir) / record["image"]))
