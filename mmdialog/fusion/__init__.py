"""Fusion modules, registered in mmdialog.registry.FUSIONS on import."""

from mmdialog.fusion.concat import ConcatFusion

__all__ = ["ConcatFusion"]
