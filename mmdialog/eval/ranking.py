"""Ranking candidate answers by the model's likelihood, in VisDial's terms.

For every scored question the model scores each candidate answer by log p(answer + <|end|> | context)
under the gold history; the candidates are ranked by that score (highest first).

- rank: 1 + the number of candidates scoring strictly higher than the gold answer;
- MRR = mean(1 / rank); R@k = share of questions with rank <= k; mean rank;
- NDCG (VisDial's definition): with relevance rel_i of the candidates and k = the number of candidates
  with rel > 0, DCG@k = sum over the k best-scored candidates of rel_i / log2(position + 1), divided by
  the DCG@k of the ideal order. It credits every acceptable answer, where MRR only sees the gold one.

Candidates for the shapes world (`world_candidates`): every answer the world can give (counts 0-7, yes,
no, each shape, colour, size, position and name: 37) in three forms each: as written, with its first
letter's case flipped ("Red", "max") and with a final period ("red."). The three forms of the gold answer
are what the exact-match metric accepts (`normalise`), so they are the acceptable ones (relevance 1) for
NDCG; MRR, R@k and the mean rank use the form the world writes.

Scoring reuses the prefix: one forward pass over the whole gold conversation fills a KV cache; for each
question the cache is cut after its <|assistant|> and all candidates are fed as one batch after it.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch

from mmdialog.answers import normalise
from mmdialog.data.collate import Collator
from mmdialog.data.processor import Processor
from mmdialog.data.worlds.shapes.dialogue import NAMES
from mmdialog.data.worlds.shapes.scene import COLOURS, MAX_OBJECTS, POSITIONS, SHAPES, SIZES
from mmdialog.eval.contexts import Context, record_image
from mmdialog.eval.matching import canonical
from mmdialog.eval.teacher_forced import assistant_spans
from mmdialog.model import MultimodalLM
from mmdialog.modules.kv_cache import KVCache

RECALL_AT = (1, 5, 10)


# ----------------------------------------------------------------------------- metrics

def rank_of(scores: list[float], gold: int) -> int:
    """1 + the number of candidates that score strictly higher than candidate `gold`."""
    return 1 + sum(s > scores[gold] for s in scores)


def retrieval_metrics(ranks: list[int]) -> dict:
    """MRR, R@1, R@5, R@10 and mean rank of the gold answers' ranks."""
    n = len(ranks)
    if not n:
        return {"mrr": None, **{f"r@{k}": None for k in RECALL_AT}, "mean_rank": None, "questions": 0}
    return {"mrr": sum(1 / r for r in ranks) / n, **{f"r@{k}": sum(r <= k for r in ranks) / n for k in RECALL_AT},
            "mean_rank": sum(ranks) / n, "questions": n}


def ndcg(scores: list[float], relevance: list[float], k: int | None = None) -> float | None:
    """VisDial's NDCG@k: k defaults to the number of relevant candidates; None when none is relevant.
    Ties in score keep candidate order (Python's sort is stable)."""
    n_rel = sum(r > 0 for r in relevance)
    if n_rel == 0:
        return None
    k = n_rel if k is None else k
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    dcg = sum(relevance[i] / math.log2(pos + 2) for pos, i in enumerate(order[:k]))
    ideal = sum(r / math.log2(pos + 2) for pos, r in enumerate(sorted(relevance, reverse=True)[:k]))
    return dcg / ideal


# ----------------------------------------------------------------------------- candidates

def world_answers() -> list[str]:
    """Every answer the shapes world gives to a scored question."""
    return ([str(i) for i in range(MAX_OBJECTS + 1)] + ["yes", "no"] + list(SHAPES) + list(COLOURS) + list(SIZES)
            + list(POSITIONS) + list(NAMES))


def forms(answer: str) -> list[str]:
    """The answer as written, with its first letter's case flipped (when it has one), with a final period."""
    flipped = answer[:1].swapcase() + answer[1:]
    return [answer] + ([flipped] if flipped != answer else []) + [answer + "."]


@dataclass
class Candidates:
    texts: list[str]
    canonical: dict[str, int]  # answer as the world writes it -> its index in texts

    def gold_and_relevance(self, gold: str) -> tuple[int, list[float]]:
        g = normalise(gold)
        return self.canonical[gold], [1.0 if normalise(t) == g else 0.0 for t in self.texts]


def world_candidates(extra: list[str] = ()) -> Candidates:
    texts, canonical = [], {}
    for a in list(world_answers()) + [e for e in extra if e not in world_answers()]:
        canonical[a] = len(texts)
        texts.extend(forms(a))
    return Candidates(texts, canonical)


# ----------------------------------------------------------------------------- scoring

class LikelihoodRanker:
    """candidates: the same list for every question (the world's), or None to rank the candidates a file
    record lists per turn (rounds' "candidates", the gold one at "gold_candidate", optional "relevance")."""

    def __init__(self, model: MultimodalLM, processor: Processor, candidates: Candidates | None):
        self.model, self.processor, self.candidates = model, processor, candidates
        tok = processor.tokenizer
        self.assistant_id, self.end_id, self.pad_id = tok.role_ids["assistant"], tok.end_id, tok.pad_id
        if candidates is not None:
            self.cand_ids, self.lengths = self._encode(candidates.texts)
        self.collate = Collator(tok.pad_id)

    def _encode(self, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, L) right-padded ids of each candidate + <|end|>, and their lengths (C,)."""
        tok = self.processor.tokenizer
        cand = [tok.encode_text(t) + [tok.end_id] for t in texts]  # candidates are plain text
        lengths = torch.tensor([len(c) for c in cand])  # (C,)
        ids = torch.full((len(cand), int(lengths.max())), tok.pad_id, dtype=torch.long)  # (C, L)
        for i, c in enumerate(cand):
            ids[i, :len(c)] = torch.tensor(c)
        return ids, lengths

    @torch.no_grad()
    def candidate_scores(self, record: dict, world_dir=None, *, image=None) -> list[tuple[int, list[float]]]:
        """(round, log p(candidate + <|end|> | gold history up to the question) for every candidate) per scored
        round that has candidates."""
        model, proc = self.model, self.processor
        device = next(model.parameters()).device
        image = image if image is not None else record_image(record, world_dir)
        seq = Context().sequences(record, image)[0]
        ex = proc(seq.conv, where=f"dialogue {record['id']}")
        spans = assistant_spans(ex.input_ids.tolist(), self.assistant_id, self.end_id)
        cache = KVCache()
        batch = {k: v.to(device) for k, v in self.collate([ex]).items() if k not in ("labels", "attention_mask")}
        logits = model(**batch, cache=cache, return_logits=True).logits[0].float()  # (T, V)
        out = []
        for turn, r in seq.scored:
            rd = record["rounds"][r]
            if "candidates" in rd:
                cand, lengths = self._encode(rd["candidates"])
            elif self.candidates is not None:
                cand, lengths = self.cand_ids, self.lengths
            else:
                continue
            C, L = cand.shape
            cand = cand.to(device)
            valid = torch.arange(L, device=device)[None] < lengths.to(device)[:, None]  # (C, L)
            start = spans[turn][0]  # first reply position; ids[start - 1] is <|assistant|>
            sub = prefix_for_batch(cache, start, C)
            mask = torch.cat([torch.ones(C, start, dtype=torch.long, device=device), valid.long()], dim=1)
            cand_logits = model(input_ids=cand, attention_mask=mask, cache=sub, return_logits=True).logits.float()
            # token 0 is predicted at the prefix's last position, token i > 0 at candidate position i - 1
            first = torch.log_softmax(logits[start - 1], -1)[cand[:, 0]]  # (C,)
            rest = torch.log_softmax(cand_logits[:, :-1], -1).gather(2, cand[:, 1:, None])[..., 0]  # (C, L-1)
            out.append((r, (first + (rest * valid[:, 1:]).sum(1)).tolist()))
        return out

    def score_record(self, record: dict, world_dir=None, *, image=None) -> list[dict]:
        """One row per scored round with candidates: the gold answer's rank, NDCG, and the best-scored candidate."""
        rows = []
        for r, scores in self.candidate_scores(record, world_dir, image=image):
            rd = record["rounds"][r]
            gold_text = rd["answer"]
            if "candidates" in rd:
                texts, gold = rd["candidates"], rd["gold_candidate"]
                g = canonical(gold_text)
                relevance = rd.get("relevance") or [1.0 if canonical(t) == g else 0.0 for t in texts]
            else:
                texts = self.candidates.texts
                gold, relevance = self.candidates.gold_and_relevance(gold_text)
            best = max(range(len(scores)), key=scores.__getitem__)
            rows.append({"id": record["id"], "round": r, "gold": gold_text, "rank": rank_of(scores, gold),
                         "ndcg": ndcg(scores, relevance), "best": texts[best], "candidates": len(texts)})
        return rows


def prefix_for_batch(cache: KVCache, n: int, batch: int) -> KVCache:
    """A cache holding the first n positions of a one-row cache, repeated `batch` times (views, no copies;
    the next update copies). Whatever a fusion keeps in the cache beside the keys and values is cut and
    repeated the same way."""
    sub = copy.copy(cache)  # a shallow copy keeps any extra state; crop replaces its lists and dicts
    sub.crop(n)
    sub.keys = [_repeat(k, batch) for k in sub.keys]
    sub.values = [_repeat(v, batch) for v in sub.values]
    if getattr(sub, "media", None):
        sub.media = {name: _repeat(m, batch) for name, m in sub.media.items()}
    return sub


def _repeat(x, batch: int):
    """Tensors of batch 1 expanded to `batch` rows; dicts and dataclasses of them likewise."""
    if isinstance(x, torch.Tensor):
        return x.expand(batch, *x.shape[1:]) if x.dim() and x.shape[0] == 1 else x
    if isinstance(x, dict):
        return {k: _repeat(v, batch) for k, v in x.items()}
    if dataclasses.is_dataclass(x):
        return dataclasses.replace(x, **{f.name: _repeat(getattr(x, f.name), batch) for f in dataclasses.fields(x)
                                         if f.init})
    return x


def summarise_ranking(rows: list[dict]) -> dict:
    m = retrieval_metrics([r["rank"] for r in rows])
    vals = [r["ndcg"] for r in rows if r["ndcg"] is not None]
    m["ndcg"] = sum(vals) / len(vals) if vals else None
    return m
