"""Media encoders, registered in mmdialog.registry.ENCODERS on import.

An encoder maps a batch of one modality to tokens (N, num_tokens, dim) and exposes both sizes
as attributes: the processor expands each placeholder to num_tokens, the fusion projects from dim.
"""

from mmdialog.encoders.image import ViTEncoder

__all__ = ["ViTEncoder"]
