"""Attention layers: pure ``torch.nn`` modules, each passing its map through a tap.

No I/O and no training code lives here; models, losses and explanations build on it.
"""

from attnscope.layers._utils import make_divisible
from attnscope.layers.attention_pool import AttentionPool2d
from attnscope.layers.cbam import CBAM, ChannelGate, SpatialGate
from attnscope.layers.global_attention import GlobalSelfAttention, position_encoding_2d
from attnscope.layers.grid import GridAttention
from attnscope.layers.local_attention import LocalSelfAttention, neighbourhood_attention
from attnscope.layers.registry import attn_class, create_attn, describe_attn, list_attn
from attnscope.layers.se import SqueezeExcite
from attnscope.layers.tap import AttentionTap, capture_attention, find_taps

__all__ = [
    "CBAM",
    "AttentionPool2d",
    "AttentionTap",
    "ChannelGate",
    "GlobalSelfAttention",
    "GridAttention",
    "LocalSelfAttention",
    "SpatialGate",
    "SqueezeExcite",
    "attn_class",
    "capture_attention",
    "create_attn",
    "describe_attn",
    "find_taps",
    "list_attn",
    "make_divisible",
    "neighbourhood_attention",
    "position_encoding_2d",
]
