"""Pretraining metrics: retrieval recall, captioning BLEU-4 and CIDEr-D.

BLEU-4 and CIDEr-D follow the MS-COCO caption evaluation code (pycocoevalcap 1.2: bleu_scorer.py with the
"closest" reference length, cider_scorer.py with sigma 6 and clipped counts), on text lower-cased and split
into words with punctuation dropped (what its Java PTB tokenizer does to plain captions). That package is not
a dependency: it is a 100 MB wheel, unmaintained since 2020, and needs Java for its tokenizer;
tests/pretrain/test_metrics.py compares these functions with its scorers wherever it is installed.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict

import torch

RECALL_AT = (1, 5, 10)


def tokenize(text: str) -> list[str]:
    """Lower-cased words and numbers, punctuation dropped."""
    return re.findall(r"[a-z0-9]+(?:'[a-z]+)?", text.lower())


# ----------------------------------------------------------------------------- retrieval

def recall_at_k(sim: torch.Tensor, same: torch.Tensor | None = None, ks=RECALL_AT) -> dict[str, float]:
    """sim (Q, C): query i's gold candidate is column i (or any column j with same[i, j]: e.g. an identical
    caption). R@k = share of queries with a gold candidate among their k highest scores (ties count against
    the query: a gold candidate must beat every other candidate to be ranked above it)."""
    q = sim.shape[0]
    gold = torch.eye(q, sim.shape[1], dtype=torch.bool, device=sim.device)
    if same is not None:
        gold = gold | same
    best_gold = sim.masked_fill(~gold, float("-inf")).max(1).values  # (Q,)
    # the rank of the best gold candidate: 1 + the others that score at least as high
    rank = 1 + (sim.masked_fill(gold, float("-inf")) >= best_gold[:, None]).sum(1)  # (Q,)
    return {f"r@{k}": float((rank <= k).float().mean()) for k in ks} | {"mean_rank": float(rank.float().mean())}


def retrieval_metrics(media_emb: torch.Tensor, text_emb: torch.Tensor, same: torch.Tensor | None = None) -> dict:
    """Both directions from (N, E) embeddings of N pairs: media -> text and text -> media."""
    sim = media_emb.float() @ text_emb.float().T  # (N media, N texts)
    same_t = same.T if same is not None else None
    return {"media_to_text": recall_at_k(sim, same), "text_to_media": recall_at_k(sim.T, same_t),
            "pairs": int(sim.shape[0])}


# ----------------------------------------------------------------------------- BLEU

def _ngrams(words: list[str], n_max: int = 4) -> Counter:
    return Counter(tuple(words[i:i + n]) for n in range(1, n_max + 1) for i in range(len(words) - n + 1))


def bleu(hyps: list[str], refs: list[list[str]], n: int = 4) -> list[float]:
    """Corpus BLEU-1..n of hypotheses against their reference lists (COCO: clipped n-gram precision, the
    geometric mean, brevity penalty from the reference length closest to each hypothesis, shorter on ties)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference lists")
    tiny, small = 1e-15, 1e-9
    guess, correct = [0] * n, [0] * n
    hyp_len = ref_len = 0
    for hyp, rs in zip(hyps, refs):
        if not rs:
            raise ValueError("every hypothesis needs at least one reference")
        h = tokenize(hyp)
        r_words = [tokenize(r) for r in rs]
        max_ref = Counter()
        for rw in r_words:
            for g, c in _ngrams(rw, n).items():
                max_ref[g] = max(max_ref[g], c)
        for g, c in _ngrams(h, n).items():
            correct[len(g) - 1] += min(c, max_ref[g])
        for k in range(n):
            guess[k] += max(len(h) - k, 0)
        hyp_len += len(h)
        ref_len += min((abs(len(rw) - len(h)), len(rw)) for rw in r_words)[1]
    out, prod = [], 1.0
    for k in range(n):
        prod *= (correct[k] + tiny) / (guess[k] + small)
        out.append(prod ** (1 / (k + 1)))
    ratio = (hyp_len + tiny) / (ref_len + small)
    if ratio < 1:
        out = [b * math.exp(1 - 1 / ratio) for b in out]
    return out


def bleu4(hyps: list[str], refs: list[list[str]]) -> float:
    return bleu(hyps, refs, 4)[3]


# ----------------------------------------------------------------------------- CIDEr-D

def cider_d(hyps: list[str], refs: list[list[str]], sigma: float = 6.0) -> tuple[float, list[float]]:
    """CIDEr-D (Vedantam et al. 2015, as in the COCO code): per hypothesis, the mean over its references of
    the average over n = 1..4 of the cosine between TF-IDF n-gram vectors (document frequencies from the
    references of the whole corpus), hypothesis weights clipped at the reference's, times a Gaussian length
    penalty exp(-delta^2 / (2 sigma^2)), times 10. The length is counted in bigrams, as the COCO code does.
    Returns (corpus score = mean, per-hypothesis scores)."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} reference lists")
    ref_counts = [[_ngrams(tokenize(r)) for r in rs] for rs in refs]
    df: Counter = Counter()
    for rcs in ref_counts:
        for g in set(g for rc in rcs for g in rc):
            df[g] += 1
    log_n = math.log(float(len(refs))) if refs else 0.0

    def vec(counts: Counter):
        v = [defaultdict(float) for _ in range(4)]
        norm = [0.0] * 4
        length = 0
        for g, tf in counts.items():
            k = len(g) - 1
            v[k][g] = tf * (log_n - math.log(max(1.0, df[g])))
            norm[k] += v[k][g] ** 2
            if k == 1:
                length += tf
        return v, [math.sqrt(x) for x in norm], length

    scores = []
    for hyp, rcs in zip(hyps, ref_counts):
        vh, nh, lh = vec(_ngrams(tokenize(hyp)))
        total = [0.0] * 4
        for rc in rcs:
            vr, nr, lr = vec(rc)
            penalty = math.exp(-((lh - lr) ** 2) / (2 * sigma ** 2))
            for k in range(4):
                val = sum(min(x, vr[k][g]) * vr[k][g] for g, x in vh[k].items())
                if nh[k] != 0 and nr[k] != 0:
                    val /= nh[k] * nr[k]
                total[k] += val * penalty
        scores.append(10.0 * sum(total) / 4 / len(rcs))
    return (sum(scores) / len(scores) if scores else 0.0), scores
