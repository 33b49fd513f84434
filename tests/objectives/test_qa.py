import torch

from mmdialog.objectives.qa import NO_CLASS, AnswerHead, AnswerVocab, answer_class_loss


def test_the_answer_set_is_ordered_by_frequency_and_normalised():
    vocab = AnswerVocab.build(["2", "red", "Red.", "2", "yes", "red", "blue"], max_size=3)
    assert vocab.answers == ["red", "2", "blue"]
    assert vocab.encode("RED") == 0 and vocab.encode("yes") == NO_CLASS and vocab.decode(1) == "2"


def test_answers_outside_the_set_are_left_out_of_the_loss_and_counted_wrong():
    logits = torch.tensor([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0]], requires_grad=True)
    classes = torch.tensor([0, 1, NO_CLASS])
    loss, acc = answer_class_loss(logits, classes)
    expected = torch.nn.functional.cross_entropy(logits[:2], classes[:2])
    assert torch.isclose(loss, expected) and abs(acc.item() - 2 / 3) < 1e-6
    loss.backward()
    assert logits.grad[2].eq(0).all()
    none, _ = answer_class_loss(logits, torch.full((3,), NO_CLASS))
    assert none.item() == 0.0 and none.requires_grad
    assert AnswerHead(8, 5)(torch.randn(2, 8)).shape == (2, 5)
