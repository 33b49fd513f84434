"""mmdialog: multimodal multi-turn dialogue models, built from parts."""

__version__ = "0.1.0"
