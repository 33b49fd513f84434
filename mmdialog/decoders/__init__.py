"""Language decoders, registered in mmdialog.registry.DECODERS on import: the own Llama-style decoder
("causal") and an adapter for any Hugging Face causal LM ("hf")."""

from mmdialog.decoders.causal import CausalDecoder
from mmdialog.decoders.hf import HFCausalDecoder

__all__ = ["CausalDecoder", "HFCausalDecoder"]
