"""Language decoders, registered in mmdialog.registry.DECODERS on import."""

from mmdialog.decoders.causal import CausalDecoder

__all__ = ["CausalDecoder"]
