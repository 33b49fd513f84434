"""Model-agnostic building blocks: attention, RoPE, norms, MLPs, KV cache, transformer block."""

from mmdialog.modules.attention import Attention, causal_mask
from mmdialog.modules.kv_cache import KVCache
from mmdialog.modules.mlp import GeluMLP, SwiGLU
from mmdialog.modules.norms import RMSNorm
from mmdialog.modules.rope import RotaryEmbedding
from mmdialog.modules.transformer import TransformerBlock

__all__ = ["Attention", "GeluMLP", "KVCache", "RMSNorm", "RotaryEmbedding", "SwiGLU", "TransformerBlock", "causal_mask"]
