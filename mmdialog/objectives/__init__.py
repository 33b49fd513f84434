"""Training objectives; they live outside the model and take its outputs."""

from mmdialog.objectives.lm import IGNORE_INDEX, lm_loss, shift_labels

__all__ = ["IGNORE_INDEX", "lm_loss", "shift_labels"]
