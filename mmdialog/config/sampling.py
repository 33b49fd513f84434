"""SamplingParams: how one reply is generated (greedy or sampled, its length, stop strings, seed), checked on
construction. A plain dataclass without torch, so that the command line (mmdialog/cli.py) takes the chat flags'
defaults from it without importing torch for --help; chat/sampling.py's Sampler applies it to the logits."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from mmdialog.errors import MMDialogError


@dataclass
class SamplingParams:
    """How one reply is generated. temperature 0 is greedy (top_k, top_p and seed then change nothing).

    top_k 0 and top_p 1.0 switch those filters off; repetition_penalty 1.0 switches it off, > 1 makes
    every token already in the reply less likely (CTRL's rule: positive logits divided, negative ones
    multiplied). Only the reply is penalised, not the context: a multi-turn answer often has to repeat
    a word the user said ("red"). stop: strings that end the reply; the reply is cut before them.
    seed: the same seed, prompt and parameters give the same reply.
    """

    max_new_tokens: int = 32
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self):
        self.validate()

    def validate(self) -> "SamplingParams":
        checks = [
            (isinstance(self.max_new_tokens, int) and self.max_new_tokens >= 1, "max_new_tokens must be an integer >= 1"),
            (_number(self.temperature) and 0 <= self.temperature <= 100, "temperature must be a number in [0, 100]"),
            (isinstance(self.top_k, int) and self.top_k >= 0, "top_k must be an integer >= 0 (0: off)"),
            (_number(self.top_p) and 0 < self.top_p <= 1, "top_p must be a number in (0, 1]"),
            (_number(self.repetition_penalty) and self.repetition_penalty > 0, "repetition_penalty must be a number > 0"),
            (isinstance(self.stop, (list, tuple)) and all(isinstance(s, str) and s for s in self.stop),
             "stop must be a list of non-empty strings"),
            (self.seed is None or (isinstance(self.seed, int) and not isinstance(self.seed, bool)), "seed must be an integer"),
        ]
        for ok, message in checks:
            if not ok:
                raise MMDialogError(f"{message}; got {self!r}")
        self.stop = list(self.stop)
        return self

    def replace(self, **changes) -> "SamplingParams":
        """A copy with some fields changed; None values leave a field as it is."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def _number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x  # NaN is no number
