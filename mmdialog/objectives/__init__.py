"""Training objectives; they live outside the model and take its outputs."""

from mmdialog.objectives.base import Objective
from mmdialog.objectives.lm import IGNORE_INDEX, lm_loss, shift_labels

__all__ = ["IGNORE_INDEX", "Objective", "lm_loss", "shift_labels"]
