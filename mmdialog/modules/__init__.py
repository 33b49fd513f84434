"""Model-agnostic building blocks: attention, RoPE, norms, MLPs, KV cache, transformer block; LoRA (lora.py)."""

from mmdialog.modules.attention import Attention, Segments, causal_mask, segment_mask
from mmdialog.modules.cross_attention import CrossAttention
from mmdialog.modules.kv_cache import KVCache, MediaMemory
from mmdialog.modules.mlp import GeluMLP, SwiGLU
from mmdialog.modules.norms import RMSNorm
from mmdialog.modules.rope import RotaryEmbedding
from mmdialog.modules.transformer import TransformerBlock

__all__ = ["Attention", "CrossAttention", "GeluMLP", "KVCache", "MediaMemory", "RMSNorm", "RotaryEmbedding", "SwiGLU",
           "Segments", "TransformerBlock", "causal_mask", "segment_mask"]
