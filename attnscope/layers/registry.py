"""Attention layers by name: ``create_attn(name, channels, **options)``."""

from __future__ import annotations

import inspect

from torch import nn

from attnscope.layers.attention_pool import AttentionPool2d
from attnscope.layers.cbam import CBAM
from attnscope.layers.global_attention import GlobalSelfAttention
from attnscope.layers.grid import GridAttention
from attnscope.layers.local_attention import LocalSelfAttention
from attnscope.layers.se import SqueezeExcite
from attnscope.registry import Registry, parameter_names

# a layer's options are its constructor's keywords after the channel count
LAYERS = Registry[type[nn.Module]](
    "attention layer",
    {
        "attn_pool": AttentionPool2d,
        "cbam": CBAM,
        "global": GlobalSelfAttention,
        "grid": GridAttention,
        "local": LocalSelfAttention,
        "se": SqueezeExcite,
    },
    options=lambda cls: parameter_names(cls, skip=1),
)


def list_attn() -> list[str]:
    """Names ``create_attn`` knows, sorted."""
    return sorted(LAYERS)


def attn_class(name: str) -> type[nn.Module]:
    """The class registered under ``name`` (any case); a ConfigError (a ValueError) lists the known names."""
    return LAYERS.get(name.lower() if isinstance(name, str) else name)


def describe_attn(name: str) -> str:
    """First line of the layer's docstring: what it does, in one sentence."""
    doc = inspect.getdoc(attn_class(name)) or ""
    return doc.splitlines()[0] if doc else ""


def attn_options(name: str) -> list[str]:
    """Keyword options of the layer, after the channel count."""
    return LAYERS.options(name.lower())


def create_attn(name: str, channels: int, **options: object) -> nn.Module:
    """Build the attention layer ``name`` for ``channels`` input channels.

    Args:
        name: a registered layer (:func:`list_attn`), in any case.
        channels: the input channels.
        **options: the layer's constructor options (``attnscope layers --options``).

    Returns:
        The layer, a plain ``torch.nn.Module`` whose map passes through its tap.

    Raises:
        ConfigError: an unknown name or option, named with the known ones.
    """
    cls = attn_class(name)
    LAYERS.check_options(name.lower(), options)
    return cls(channels, **options)
