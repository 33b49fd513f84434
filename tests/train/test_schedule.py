import pytest

from mmdialog.config import TrainConfig
from mmdialog.train.trainer import lr_factor


def test_warmup_then_cosine_to_floor():
    cfg = TrainConfig(warmup_steps=10, min_lr_ratio=0.1)
    assert lr_factor(0, 0.0, cfg) == pytest.approx(0.1)
    assert lr_factor(9, 0.05, cfg) == pytest.approx(1.0)
    assert lr_factor(10, 0.0, cfg) == pytest.approx(1.0)
    assert lr_factor(500, 0.5, cfg) == pytest.approx(0.55)
    assert lr_factor(999, 1.0, cfg) == pytest.approx(0.1)
    assert lr_factor(999, 3.0, cfg) == pytest.approx(0.1)  # past the budget it stays at the floor
