"""Ranking metrics on a worked example, and likelihood scores against a brute-force forward pass."""

import math

import pytest
import torch

from mmdialog.eval.contexts import Context, record_image
from mmdialog.eval.ranking import (
    LikelihoodRanker, forms, ndcg, rank_of, retrieval_metrics, summarise_ranking, world_answers, world_candidates,
)


def test_retrieval_metrics_worked_example():
    # three questions; the gold answers come 1st, 3rd and 12th
    scores = [[0.9, 0.1, 0.3], [0.2, 0.5, 0.9, 0.1], [float(12 - i) for i in range(12)]]
    ranks = [rank_of(scores[0], 0), rank_of(scores[1], 0), rank_of(scores[2], 11)]
    assert ranks == [1, 3, 12]
    m = retrieval_metrics(ranks)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 12) / 3)
    assert (m["r@1"], m["r@5"], m["r@10"]) == (pytest.approx(1 / 3), pytest.approx(2 / 3), pytest.approx(2 / 3))
    assert m["mean_rank"] == pytest.approx(16 / 3) and m["questions"] == 3
    assert rank_of([0.5, 0.5, 0.7], 0) == 2  # ties do not push the gold answer down
    assert retrieval_metrics([])["mrr"] is None


def test_ndcg_worked_example_with_several_acceptable_answers():
    # candidates a..e scored 5, 4, 3, 2, 1 (ranked a, b, c, d, e); relevance: b 1, d 0.5, e 1 (3 relevant: k = 3)
    scores, rel = [5, 4, 3, 2, 1], [0, 1, 0, 0.5, 1]
    dcg = 0 / math.log2(2) + 1 / math.log2(3) + 0 / math.log2(4)
    ideal = 1 / math.log2(2) + 1 / math.log2(3) + 0.5 / math.log2(4)
    assert ndcg(scores, rel) == pytest.approx(dcg / ideal)  # VisDial: k = number of relevant candidates
    assert ndcg(scores, rel, k=5) == pytest.approx((dcg + 0.5 / math.log2(5) + 1 / math.log2(6)) / (ideal))
    assert ndcg([1, 2, 3], [0, 0, 1]) == 1.0 and ndcg([3, 2, 1], [0, 0, 0]) is None
    assert summarise_ranking([{"rank": 1, "ndcg": 1.0}, {"rank": 2, "ndcg": None}])["ndcg"] == 1.0


def test_world_candidates_hold_every_answer_in_three_acceptable_forms():
    c = world_candidates()
    assert len(world_answers()) == 37 and len(set(c.texts)) == len(c.texts)
    assert forms("red") == ["red", "Red", "red."] and forms("3") == ["3", "3."] and forms("Max") == ["Max", "max", "Max."]
    gold, rel = c.gold_and_relevance("top left")
    assert c.texts[gold] == "top left" and [c.texts[i] for i, r in enumerate(rel) if r] == ["top left", "Top left", "top left."]


def test_cached_candidate_scores_equal_full_forward_passes(tiny, world32):
    model, proc = tiny
    world, records = world32
    rec = records[0]
    cands = world_candidates()
    ranker = LikelihoodRanker(model, proc, cands)
    got = dict(ranker.candidate_scores(rec, world))
    tok = proc.tokenizer
    seq = Context().sequences(rec, record_image(rec, world))[0]
    for r in (1, 5):
        conv = seq.conv.prefix(2 * r + 1)  # up to round r's question
        for i in (0, 17, 60):
            conv2 = seq.conv.prefix(2 * r + 1).add("assistant", cands.texts[i])
            ex = proc(conv2)
            ids = ex.input_ids.tolist()
            n = len(tok.encode(cands.texts[i])) + 1  # reply tokens and <|end|>
            with torch.no_grad():
                logp = torch.log_softmax(model(input_ids=ex.input_ids[None], images=ex.images).logits[0], -1)
            want = sum(float(logp[p - 1, ids[p]]) for p in range(len(ids) - n, len(ids)))
            assert got[r][i] == pytest.approx(want, abs=1e-4)
        assert len(proc(conv).input_ids) < len(ids)
    rows = ranker.score_record(rec, world)
    assert [row["round"] for row in rows] == [rd["round"] for rd in rec["rounds"] if rd["scored"]]
    assert all(1 <= row["rank"] <= len(cands.texts) and 0 <= row["ndcg"] <= 1 for row in rows)


def test_candidates_are_plain_text_as_replies_are(tiny):
    """A candidate that spells a special token is scored as the characters a reply would hold, not as that token."""
    model, proc = tiny
    tok = proc.tokenizer
    ranker = LikelihoodRanker(model, proc, None)
    ids, lengths = ranker._encode(["<|end|>", "yes"])
    assert ids[0, :lengths[0]].tolist() == tok.encode_text("<|end|>") + [tok.end_id]
    assert ids[0, 0].item() != tok.end_id and lengths[0] > 2
    assert ids[1, :lengths[1]].tolist() == tok.encode("yes") + [tok.end_id]
