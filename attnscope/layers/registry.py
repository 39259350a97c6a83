"""Attention layers by name: ``create_attn(name, channels, **options)``."""

from __future__ import annotations

import inspect

from torch import nn

from attnscope.errors import ConfigError
from attnscope.layers.attention_pool import AttentionPool2d
from attnscope.layers.cbam import CBAM
from attnscope.layers.global_attention import GlobalSelfAttention
from attnscope.layers.grid import GridAttention
from attnscope.layers.local_attention import LocalSelfAttention
from attnscope.layers.se import SqueezeExcite

_LAYERS: dict[str, type[nn.Module]] = {
    "attn_pool": AttentionPool2d,
    "cbam": CBAM,
    "global": GlobalSelfAttention,
    "grid": GridAttention,
    "local": LocalSelfAttention,
    "se": SqueezeExcite,
}


def list_attn() -> list[str]:
    """Names ``create_attn`` knows, sorted."""
    return sorted(_LAYERS)


def attn_class(name: str) -> type[nn.Module]:
    """The class registered under ``name``; a ConfigError (a ValueError) lists the known names."""
    cls = _LAYERS.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"unknown attention layer {name!r}; known layers: {', '.join(list_attn())}")
    return cls


def describe_attn(name: str) -> str:
    """First line of the layer's docstring: what it does, in one sentence."""
    doc = inspect.getdoc(attn_class(name)) or ""
    return doc.splitlines()[0] if doc else ""


def attn_options(name: str) -> list[str]:
    """Keyword options of the layer, after the channel count."""
    parameters = list(inspect.signature(attn_class(name)).parameters.values())[1:]
    return [p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def create_attn(name: str, channels: int, **options: object) -> nn.Module:
    """Build the attention layer ``name`` for ``channels`` input channels.

    ``options`` go to the layer's constructor; one it does not take raises a
    ConfigError that names it and lists the ones it takes.
    """
    cls = attn_class(name)
    known = attn_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise ConfigError(f"attention layer {name!r} has no option(s) {unknown}; its options are: {', '.join(known)}")
    return cls(channels, **options)
