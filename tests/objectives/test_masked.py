import pytest
import torch

from mmdialog.objectives.lm import IGNORE_INDEX
from mmdialog.objectives.masked import mask_tokens, masked_lm_loss

MASK = 99


def test_only_candidates_are_masked_and_only_they_are_targets():
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (8, 30), generator=g)
    candidates = torch.zeros(8, 30, dtype=torch.bool)
    candidates[:, 10:25] = True
    masked, targets = mask_tokens(ids, candidates, MASK, 0.3, generator=g)
    chosen = masked == MASK
    assert not (chosen & ~candidates).any()  # nothing outside the candidates
    assert torch.equal(masked[~chosen], ids[~chosen])  # everything else untouched
    assert torch.equal(targets[chosen], ids[chosen])  # the targets are the original tokens
    assert (targets[~chosen] == IGNORE_INDEX).all()
    share = chosen.sum().item() / candidates.sum().item()
    assert 0.15 < share < 0.45


def test_every_row_with_a_candidate_gets_a_mask():
    ids = torch.arange(20).reshape(4, 5)
    candidates = torch.tensor([[0, 1, 1, 0, 0], [0, 0, 0, 0, 0], [1, 0, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    masked, targets = mask_tokens(ids, candidates, MASK, 0.01, generator=torch.Generator().manual_seed(1))
    per_row = (masked == MASK).sum(1).tolist()
    assert per_row[0] >= 1 and per_row[1] == 0 and per_row[2] == 1 and per_row[3] >= 1
    assert masked[2, 0] == MASK and targets[2, 0] == 10


def test_masked_positions_only_contribute_to_the_loss():
    g = torch.Generator().manual_seed(2)
    ids = torch.randint(0, 40, (3, 12), generator=g)
    candidates = torch.ones(3, 12, dtype=torch.bool)
    _, targets = mask_tokens(ids, candidates, MASK, 0.25, generator=g)
    logits = torch.randn(3, 12, 40, generator=g, requires_grad=True)
    sel = targets != IGNORE_INDEX
    loss, _ = masked_lm_loss(logits[sel], targets[sel])
    loss.backward()
    grad_rows = logits.grad.abs().sum(-1) > 0  # (3, 12): positions whose logits the loss depends on
    assert torch.equal(grad_rows, sel)
    expected = torch.nn.functional.cross_entropy(logits[sel], ids[sel])
    assert loss.item() == pytest.approx(expected.item())


def test_no_masked_position_gives_zero_attached_to_the_graph():
    logits = torch.randn(0, 10, requires_grad=True)
    loss, acc = masked_lm_loss(logits, torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0 and loss.requires_grad


def test_a_bad_probability_is_refused():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        mask_tokens(torch.zeros(1, 3, dtype=torch.long), torch.ones(1, 3, dtype=torch.bool), MASK, 0.0)
