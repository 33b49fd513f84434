"""Greedy exact match without generating: one teacher-forced forward pass per batch of sequences.

Greedy decoding reproduces a gold reply exactly iff, with the gold reply fed in (teacher forcing), the
argmax at every reply position is the gold token, and at the position after it the argmax is <|end|>.
So the greedy answers to every round of a dialogue under its gold history are decided by ONE forward
pass over the whole gold conversation (the causal mask keeps each round from seeing later ones), and a
batch of dialogues by one batched pass. The rules that make it the same as `ChatSession.generate`:

- the argmax is taken over the tokens the session may sample (padding, <|bos|>, role and media tokens
  are banned, and <|end|> as a reply's first token), exactly as its greedy sampler does;
- a reply of n tokens needs <|end|> at position n+1 only if max_new_tokens > n (the session stops at
  max_new_tokens without producing <|end|>); a gold reply longer than max_new_tokens can never be produced.

The one difference from comparing generated TEXT: generation that produces the same text through other
tokens (another split of a word) or a variant that `normalise` accepts ("Red", "red.") counts as right
there and wrong here. tests/eval/test_teacher_forced.py checks the two agree; benchmarks/eval_speed.py
measures both on a trained model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from mmdialog.data.collate import Collator
from mmdialog.data.processor import Example, Processor
from mmdialog.eval.contexts import Sequence
from mmdialog.model import MultimodalLM


@dataclass
class TurnScore:
    """The verdict on one scored reply."""

    correct: bool  # greedy decoding would produce exactly the gold reply
    pred: str  # the greedy reply as far as teacher forcing determines it: the gold tokens up to the
    #            first wrong one, that token included; the whole gold reply when correct
    first_wrong: int  # index of the first wrong token (len(reply) when only <|end|> was missing), -1 if correct
    logprob: float  # log-likelihood of the gold reply and its <|end|> (model's full distribution)
    tokens: int  # gold reply tokens, <|end|> included


def assistant_spans(ids: list[int], assistant_id: int, end_id: int) -> list[tuple[int, int]]:
    """(start, end) of every assistant reply: its tokens are ids[start:end], ids[end] is its <|end|>."""
    spans, start = [], None
    for i, t in enumerate(ids):
        if t == assistant_id:
            start = i + 1
        elif t == end_id and start is not None:
            spans.append((start, i))
            start = None
    return spans


class TeacherForcedScorer:
    """Scores the marked replies of many Sequences with batched forward passes.

    max_batch_tokens bounds B x T_max of a batch (sequences are sorted by length, so padding is small).
    """

    def __init__(self, model: MultimodalLM, processor: Processor, *, max_new_tokens: int,
                 max_batch_tokens: int = 16384):
        self.model, self.processor = model, processor
        self.max_new_tokens = max_new_tokens
        self.max_batch_tokens = max_batch_tokens
        tok = processor.tokenizer
        self.assistant_id, self.end_id = tok.role_ids["assistant"], tok.end_id
        self.banned = processor.tokenizer.never_generated
        self.collate = Collator(tok.pad_id)

    def prepare(self, seqs: list[Sequence]) -> list[Example]:
        return [self.processor(s.conv, where=f"dialogue {s.id}") for s in seqs]

    @torch.no_grad()
    def score(self, seqs: list[Sequence], examples: list[Example] | None = None, *, desc: str = "score",
              progress: bool = False) -> list[list[TurnScore]]:
        """For each sequence, a TurnScore per entry of its `scored`, in that order."""
        examples = self.prepare(seqs) if examples is None else examples
        out: list[list[TurnScore] | None] = [None] * len(seqs)
        order = sorted(range(len(seqs)), key=lambda i: -len(examples[i].input_ids))
        with tqdm(total=len(seqs), desc=desc, disable=not progress, leave=False) as bar:
            i = 0
            while i < len(order):
                t_max = len(examples[order[i]].input_ids)
                j = i + max(1, self.max_batch_tokens // t_max)
                idx = order[i:j]
                for k, res in zip(idx, self._score_batch([seqs[k] for k in idx], [examples[k] for k in idx])):
                    out[k] = res
                bar.update(len(idx))
                i = j
        return out  # type: ignore[return-value]

    def _score_batch(self, seqs: list[Sequence], examples: list[Example]) -> list[list[TurnScore]]:
        batch = self.collate(examples)
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items() if k != "labels"}
        logits = self.model(**batch, return_logits=True).logits  # (B, T, V)
        # Gather the rows that predict reply tokens: position p predicts token p + 1.
        rows, where = [], []  # (b, p) per reply token; where[s] = (b, span, slice into rows)
        for b, (seq, ex) in enumerate(zip(seqs, examples)):
            ids = ex.input_ids.tolist()
            spans = assistant_spans(ids, self.assistant_id, self.end_id)
            for turn, _ in seq.scored:
                start, end = spans[turn]
                first = len(rows)
                rows.extend((b, p) for p in range(start - 1, end))  # predicts ids[start .. end] (end: <|end|>)
                where.append((b, ids[start:end + 1], first))
        if not rows:
            return [[] for _ in seqs]
        bi = torch.tensor([r[0] for r in rows], device=device)
        pi = torch.tensor([r[1] for r in rows], device=device)
        sel = logits[bi, pi].float()  # (N, V)
        logp = torch.log_softmax(sel, dim=-1)
        sel[:, self.banned] = float("-inf")
        sel[[first for _, _, first in where], self.end_id] = float("-inf")  # the session never replies with nothing
        argmax = sel.argmax(-1).tolist()
        targets = torch.tensor([t for _, toks, _ in where for t in toks], device=device)
        gold_logp = logp.gather(1, targets[:, None])[:, 0].tolist()

        results: list[list[TurnScore]] = [[] for _ in seqs]
        decode = self.processor.tokenizer.decode
        for b, toks, first in where:
            n = len(toks) - 1  # reply tokens without <|end|>
            got = argmax[first:first + n + 1]
            need = n + 1 if n < self.max_new_tokens else self.max_new_tokens  # <|end|> only if there is room
            wrong = next((k for k in range(min(need, n + 1)) if got[k] != toks[k]), -1)
            if n > self.max_new_tokens and wrong == -1:
                wrong = self.max_new_tokens  # the reply is cut before it is complete
            pred_ids = toks[:n] if wrong == -1 else toks[:wrong] + ([got[wrong]] if wrong < len(got) else [])
            pred_ids = [t for t in pred_ids if t != self.end_id]
            results[b].append(TurnScore(correct=wrong == -1, pred=decode(pred_ids), first_wrong=wrong,
                                        logprob=float(sum(gold_logp[first:first + n + 1])), tokens=n + 1))
        return results
