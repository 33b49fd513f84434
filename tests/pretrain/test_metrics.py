import math

import pytest
import torch

from mmdialog.pretrain.metrics import bleu, bleu4, cider_d, recall_at_k, retrieval_metrics, tokenize


def test_recall_at_k_on_a_hand_made_ranking():
    sim = torch.tensor([[0.9, 0.1, 0.2],    # gold first
                        [0.8, 0.5, 0.9],    # gold third
                        [0.1, 0.7, 0.6]])   # gold second
    r = recall_at_k(sim, ks=(1, 2, 3))
    assert r == {"r@1": pytest.approx(1 / 3), "r@2": pytest.approx(2 / 3), "r@3": 1.0,
                 "mean_rank": pytest.approx(2.0)}


def test_ties_count_against_the_query_and_equal_captions_count_as_gold():
    sim = torch.ones(3, 3)  # an encoder that says nothing: every rank is the worst
    assert recall_at_k(sim, ks=(1,))["r@1"] == 0.0
    sim = torch.tensor([[0.1, 0.9, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    same = torch.zeros(3, 3, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True  # captions 0 and 1 are the same text
    assert recall_at_k(sim, same, ks=(1,))["r@1"] == 1.0


def test_retrieval_goes_both_ways():
    media = torch.eye(3)
    text = torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]])  # texts 1 and 2 swapped
    r = retrieval_metrics(media, text)
    assert r["media_to_text"]["r@1"] == pytest.approx(1 / 3) and r["text_to_media"]["r@1"] == pytest.approx(1 / 3)
    assert r["pairs"] == 3


def test_bleu_of_a_perfect_caption_is_one_and_of_a_disjoint_one_is_zero():
    assert bleu4(["a large red circle at the top"], [["a large red circle at the top"]]) == pytest.approx(1.0)
    assert bleu4(["blue square"], [["a large red circle"]]) < 1e-6


def test_bleu_by_hand():
    # hyp 6 words; ref 7 words. Clipped matches: 1-grams 5/6, 2-grams 3/5, 3-grams 2/4, 4-grams 1/3.
    hyp, ref = "the red circle is at top", "the red circle is on the top"
    b = bleu([hyp], [[ref]])
    p = [5 / 6, 3 / 5, 2 / 4, 1 / 3]
    bp = math.exp(1 - 7 / 6)
    assert b[0] == pytest.approx(p[0] * bp, rel=1e-6)
    assert b[1] == pytest.approx((p[0] * p[1]) ** 0.5 * bp, rel=1e-6)
    assert b[2] == pytest.approx((p[0] * p[1] * p[2]) ** (1 / 3) * bp, rel=1e-6)
    assert b[3] == pytest.approx((p[0] * p[1] * p[2] * p[3]) ** (1 / 4) * bp, rel=1e-6)


def test_bleu_takes_the_closest_reference_length():
    hyp = "a red circle"
    short = bleu([hyp], [["a red circle", "a red circle at the top left of it"]])[0]
    assert short == pytest.approx(1.0)  # the 3-word reference is the closest: no brevity penalty


def test_cider_d_by_hand():
    # Two captions with no word in common: each n-gram's idf is log(2 / 1). A caption equal to its reference
    # has cosine 1 at every n = 1..4, no length penalty: 10 * 1. A caption sharing nothing scores 0.
    refs = [["a large red circle at the top"], ["two small blue squares on the left"]]
    score, per = cider_d(["a large red circle at the top", "one green triangle"], refs)
    assert per[0] == pytest.approx(10.0) and per[1] == 0.0 and score == pytest.approx(5.0)


def test_cider_d_penalises_length_and_clips_repeats():
    refs = [["a red circle at the top"], ["a blue square"]]
    exact = cider_d(["a red circle at the top", "a blue square"], refs)[1][0]
    longer = cider_d(["a red circle at the top at the top at the top", "a blue square"], refs)[1][0]
    assert longer < exact


def test_tokenize_drops_punctuation_and_case():
    assert tokenize("There are 3 shapes: a Large red circle.") == ["there", "are", "3", "shapes", "a", "large",
                                                                     "red", "circle"]


def test_same_as_the_coco_caption_code_where_it_is_installed():
    coco = pytest.importorskip("pycocoevalcap.cider.cider", reason="pycocoevalcap is not installed (optional)")
    from pycocoevalcap.bleu.bleu import Bleu

    import random

    rng = random.Random(0)
    words = "a red blue green circle square triangle large small at the top left right bottom shapes 3 4".split()
    hyps = [" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(30)]
    refs = [[" ".join(rng.choices(words, k=rng.randint(3, 12))) for _ in range(rng.randint(1, 3))] for _ in range(30)]
    res = {i: [" ".join(tokenize(h))] for i, h in enumerate(hyps)}
    gts = {i: [" ".join(tokenize(r)) for r in rs] for i, rs in enumerate(refs)}
    b, _ = Bleu(4).compute_score(gts, res, verbose=0)
    c, _ = coco.Cider().compute_score(gts, res)
    assert bleu(hyps, refs) == pytest.approx(b, rel=1e-9)
    assert cider_d(hyps, refs)[0] == pytest.approx(c, rel=1e-9)
