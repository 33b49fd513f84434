import pytest
import torch

from mmdialog.objectives.matching import MatchingHead, matching_loss, mine_hard_negatives

SIM = torch.tensor([[0.9, 0.8, 0.1, 0.3],   # media 0: texts 1 then 3 are the closest non-matches
                    [0.2, 0.7, 0.6, 0.9],   # media 1: text 3 is closer than its own
                    [0.5, 0.4, 0.3, 0.1],
                    [0.0, 0.1, 0.2, 0.95]])


def test_hardest_negatives_are_the_most_similar_non_matching_pairs():
    text_for_media, media_for_text = mine_hard_negatives(SIM)
    assert text_for_media.tolist() == [1, 3, 0, 2]
    assert media_for_text.tolist() == [2, 0, 1, 1]  # column j's best row other than j
    for i in range(4):  # never the pair itself, and nothing that is not a pair scores higher
        assert text_for_media[i] != i and media_for_text[i] != i
        others = [SIM[i, j] for j in range(4) if j != i]
        assert SIM[i, text_for_media[i]] == max(others)


def test_a_caption_equal_to_the_gold_one_is_never_a_negative():
    same = torch.zeros(4, 4, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True  # pairs 0 and 1 have the same caption
    text_for_media, media_for_text = mine_hard_negatives(SIM, same)
    assert text_for_media[0] == 3 and text_for_media[1] == 3
    assert media_for_text[1] == 2 and media_for_text[0] == 2


def test_when_every_caption_is_the_same_any_other_item_is_the_negative():
    same = torch.ones(3, 3, dtype=torch.bool)
    t, m = mine_hard_negatives(SIM[:3, :3], same)
    assert all(t[i] != i and m[i] != i for i in range(3))


def test_sampled_negatives_are_never_the_pair_or_a_match():
    g = torch.Generator().manual_seed(0)
    sim = torch.randn(6, 6, generator=g)
    same = torch.zeros(6, 6, dtype=torch.bool)
    same[2, 4] = same[4, 2] = True
    for _ in range(50):
        t, m = mine_hard_negatives(sim, same, mode="sample", generator=g)
        assert all(t[i] != i and m[i] != i for i in range(6))
        assert t[2] != 4 and t[4] != 2 and m[2] != 4 and m[4] != 2


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="at least 2 pairs"):
        mine_hard_negatives(torch.ones(1, 1))
    with pytest.raises(ValueError, match="hardest or sample"):
        mine_hard_negatives(SIM, mode="easy")


def test_matching_loss_labels_the_first_rows_as_matches():
    logits = torch.tensor([[0.0, 5.0], [0.0, 5.0], [5.0, 0.0], [5.0, 0.0], [5.0, 0.0], [5.0, 0.0]])
    loss, acc = matching_loss(logits, n_pos=2)
    assert acc.item() == 1.0 and loss.item() < 0.01
    loss_swapped, acc_swapped = matching_loss(logits.flip(1), n_pos=2)
    assert acc_swapped.item() == 0.0 and loss_swapped.item() > 4
    assert MatchingHead(8)(torch.randn(3, 8)).shape == (3, 2)
