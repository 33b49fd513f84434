"""Fusion modules, registered in mmdialog.registry.FUSIONS on import; each subclasses Fusion (the protocol,
with its defaults: fusion/common.py).

concat (placeholder slots), cross_attention (gated layers inside the decoder), interactive (co-attention
before the decoder), hierarchical (several encoder depths), dynamic (an input-conditioned gate over levels
and modalities), resampler (learned queries, a fixed token count per item).
"""

from mmdialog.fusion.common import Fusion
from mmdialog.fusion.concat import ConcatFusion
from mmdialog.fusion.cross_attention import CrossAttentionFusion
from mmdialog.fusion.dynamic import DynamicFusion
from mmdialog.fusion.hierarchical import HierarchicalFusion
from mmdialog.fusion.interactive import InteractiveFusion
from mmdialog.fusion.resampler import ResamplerFusion

__all__ = ["ConcatFusion", "CrossAttentionFusion", "DynamicFusion", "Fusion", "HierarchicalFusion", "InteractiveFusion",
           "ResamplerFusion"]
