"""Language decoders, registered in mmdialog.registry.DECODERS on import: the own Llama-style decoder
("causal") and an adapter for any Hugging Face causal LM ("hf"), both subclasses of Decoder (decoders/base.py:
the protocol the model, the trainer and eval read, with its defaults)."""

from mmdialog.decoders.base import Decoder
from mmdialog.decoders.causal import CausalDecoder
from mmdialog.decoders.hf import HFCausalDecoder

__all__ = ["CausalDecoder", "Decoder", "HFCausalDecoder"]
