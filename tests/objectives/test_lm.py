import torch
import torch.nn.functional as F

from mmdialog.objectives import lm_loss, shift_labels


def test_shift_labels_moves_targets_left():
    labels = torch.tensor([[-100, 5, 6, 7], [1, 2, -100, -100]])
    assert shift_labels(labels).tolist() == [[5, 6, 7, -100], [2, -100, -100, -100]]


def test_loss_is_the_mean_over_supervised_targets_in_fp32():
    logits = torch.randn(5, 11)
    targets = torch.tensor([3, -100, 4, -100, 10])
    keep = targets != -100
    expected = F.cross_entropy(logits[keep], targets[keep])
    torch.testing.assert_close(lm_loss(logits, targets), expected)
    bf16 = lm_loss(logits.bfloat16(), targets)
    assert bf16.dtype == torch.float32


def test_no_supervised_target_gives_zero_not_nan():
    logits = torch.randn(3, 11, requires_grad=True)
    loss = lm_loss(logits, torch.full((3,), -100))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph
    assert logits.grad.eq(0).all()


def test_the_ignore_label_is_defined_once():
    """-100 is written in one place in the package (objectives/lm.py, where the loss skips it); the processor, which
    writes the labels, and the collator import it, so the label the processor writes is the one the loss skips."""
    import ast
    from pathlib import Path

    import mmdialog
    from mmdialog.data import collate, processor
    from mmdialog.objectives import IGNORE_INDEX

    assert processor.IGNORE_INDEX is collate.IGNORE_INDEX is IGNORE_INDEX == -100
    root = Path(mmdialog.__file__).resolve().parent
    found = [f"{p.relative_to(root)}" for p in sorted(root.rglob("*.py"))
             for node in ast.walk(ast.parse(p.read_text()))
             if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub)
             and isinstance(node.operand, ast.Constant) and node.operand.value == 100]
    assert found == ["objectives/lm.py"], found


def test_the_next_token_objective_weighs_a_batch_by_its_targets():
    """batch_weight (the Objective protocol, objectives/base.py): the supervised targets before the forward pass,
    or their message weights; last_terms is the protocol's default, none."""
    from mmdialog.objectives import Objective
    from mmdialog.objectives.lm import NextTokenObjective

    obj = NextTokenObjective(torch.nn.Identity())
    assert isinstance(obj, Objective) and dict(obj.last_terms) == {}
    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, 8]])
    assert obj.batch_weight({"labels": labels}).item() == 4
    weights = torch.tensor([[0.0, 0.5, 0.5, 0.0], [0.0, 0.0, 2.0, 2.0]])
    assert obj.batch_weight({"labels": labels, "loss_weights": weights}).item() == 5.0


def test_an_objective_must_define_forward_and_batch_weight():
    import pytest

    from mmdialog.objectives import Objective

    with pytest.raises(NotImplementedError, match="Objective must define batch_weight"):
        Objective().batch_weight({})
    with pytest.raises(NotImplementedError, match="Objective must define forward"):
        Objective()({})
