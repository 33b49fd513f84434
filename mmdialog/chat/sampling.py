"""Choosing the next token: greedy, temperature, top-k, top-p, repetition penalty; stop strings; streaming text.

`Sampler` turns next-token logits (V,) into a token id; `TextStream` turns the growing list of
reply ids into text pieces that are safe to show: never half a UTF-8 character (a byte-level BPE
token may hold part of one) and never the start of a stop string that may still complete. SamplingParams,
what they apply, lives in config/sampling.py (no torch there) and is imported from here too.
"""

from __future__ import annotations

import torch

from mmdialog.config.sampling import SamplingParams


class Sampler:
    """Next token from logits (V,), with `banned` ids (padding, placeholders, role tokens) never chosen, and
    `end_id` (when given) never chosen as a reply's first token: a reply is never empty."""

    def __init__(self, params: SamplingParams, banned: list[int] = (), end_id: int | None = None):
        self.params, self.end_id = params, end_id
        self.banned = torch.tensor(sorted(set(banned)), dtype=torch.long)
        self.generator = None
        if not params.greedy:
            self.generator = torch.Generator()
            self.generator.manual_seed(params.seed if params.seed is not None else int(torch.randint(2**62, ()).item()))

    def __call__(self, logits: torch.Tensor, reply: list[int]) -> int:
        p = self.params
        logits = self._masked(logits.float().cpu().clone()[None], [reply])[0]  # (V,)
        if p.repetition_penalty != 1.0 and reply:
            seen = torch.tensor(sorted(set(reply)), dtype=torch.long)
            vals = logits[seen]
            logits[seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if p.greedy:
            return int(logits.argmax())
        logits = logits / max(p.temperature, 1e-6)  # below ~1e-38 a float32 divisor is 0 (and the logits NaN)
        if p.top_k and p.top_k < logits.numel():
            kth = torch.topk(logits, p.top_k).values[-1]
            logits[logits < kth] = float("-inf")
        if p.top_p < 1.0:
            sorted_logits, order = torch.sort(logits, descending=True)
            probs = sorted_logits.softmax(-1)
            # keep the smallest head of the sorted distribution whose mass reaches top_p (at least one token)
            drop = probs.cumsum(-1) - probs >= p.top_p  # mass before this token already reaches top_p
            logits[order[drop]] = float("-inf")
        probs = logits.softmax(-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))

    def rows(self, logits: torch.Tensor, replies: list[list[int]]) -> list[int]:
        """One token per row from logits (A, V) and each row's reply so far: the `choose` of model.decode.
        Greedy without a repetition penalty picks all rows in one masked argmax (the same tokens as row by
        row: the same values, the first maximum); otherwise row by row, in order."""
        p = self.params
        if not (p.greedy and p.repetition_penalty == 1.0):
            return [self(lg, reply) for lg, reply in zip(logits, replies)]
        return self._masked(logits.float().clone(), replies).argmax(-1).tolist()

    def _masked(self, logits: torch.Tensor, replies: list[list[int]]) -> torch.Tensor:
        """logits (A, V), changed in place: the banned ids never chosen, end_id never a reply's first token."""
        banned = self.banned[self.banned < logits.shape[-1]].to(logits.device)
        if len(banned):
            logits[:, banned] = float("-inf")
        if self.end_id is not None:
            empty = [i for i, reply in enumerate(replies) if not reply]
            if empty:
                logits[empty, self.end_id] = float("-inf")
        return logits


class TextStream:
    """Incremental detokenisation with stop strings.

    push(ids) takes the whole reply so far and returns the new text that is safe to show. The full
    decode is redone each step (replies are short; it keeps byte-level BPE merges across tokens
    right), text ending in U+FFFD is held back until its character completes, and so is any tail
    that could be the beginning of a stop string. `stopped` turns true when a stop string appeared;
    `text` is then the reply cut before it.
    """

    def __init__(self, decode, stop: list[str] = ()):
        self.decode = decode
        self.stop = [s for s in stop if s]
        self.emitted = 0  # characters of `text` already returned
        self.text = ""
        self.stopped = False

    def push(self, ids: list[int]) -> str:
        text = self.decode(ids)
        safe = len(text)
        while safe > 0 and text[safe - 1] == "\ufffd":  # an incomplete multi-byte character
            safe -= 1
        for s in self.stop:
            i = text.find(s, max(0, self.emitted - len(s) + 1))
            if i != -1:
                self.stopped = True
                text, safe = text[:i], min(safe, i)
        if not self.stopped:
            for s in self.stop:  # hold back a tail that may grow into a stop string
                for k in range(min(len(s) - 1, safe), 0, -1):
                    if text[:safe].endswith(s[:k]):
                        safe -= k
                        break
        self.text = text
        piece = text[self.emitted:safe] if safe > self.emitted else ""
        self.emitted = max(self.emitted, safe)
        return piece

    def flush(self) -> str:
        """At the end of the reply: whatever was held back (a stop-string prefix that never completed)."""
        piece = self.text[self.emitted:]
        self.emitted = len(self.text)
        return piece
