"""Attention taps and their capture.

Models return logits only (DESIGN.md, Contracts). An attention module passes its
map through an :class:`AttentionTap`, an identity submodule, and
:func:`capture_attention` reads every tap of a model with forward hooks for as
long as its ``with`` block lasts. Outside the block a tap is a bare identity:
no hook, no stored tensor, no extra computation.

A few layers (the self-attention ones) need extra work to turn their attention
into a spatial map. They do it only while a tap is observed (``tap.observed``),
so that the map costs nothing in training.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

TAP_SUFFIX = ".tap"


class AttentionTap(nn.Module):
    """Identity module through which an attention module passes its map."""

    def __init__(self) -> None:
        super().__init__()
        self.observers = 0

    @property
    def observed(self) -> bool:
        """True while a :func:`capture_attention` block watches this tap."""
        return self.observers > 0

    def forward(self, attention: torch.Tensor) -> torch.Tensor:
        return attention


def map_name(tap_name: str) -> str:
    """Name under which a tap's map is captured: its owner's qualified name.

    ``pool3.tap`` becomes ``pool3``; a tap that is itself the captured module's
    direct child (``tap``) keeps the name ``tap``.
    """
    if tap_name.endswith(TAP_SUFFIX):
        return tap_name[: -len(TAP_SUFFIX)]
    return tap_name


def find_taps(model: nn.Module) -> dict[str, AttentionTap]:
    """Every tap of ``model``, keyed by the name its map is captured under."""
    taps: dict[str, AttentionTap] = {}
    for name, module in model.named_modules():
        if isinstance(module, AttentionTap):
            taps[map_name(name) if name else "tap"] = module
    return taps


@contextlib.contextmanager
def capture_attention(model: nn.Module, *, detach: bool = False) -> Iterator[dict[str, torch.Tensor]]:
    """Capture the attention maps of ``model`` during forward passes in the block.

    Yields a dict that each forward pass fills with ``{name: map}``; a later pass
    replaces the maps of an earlier one. Maps keep their autograd graph (so that a
    loss can supervise them) unless ``detach`` is set. Every hook is removed when
    the block ends, also when it ends by an exception.

    Example::

        with capture_attention(model) as maps:
            logits = model(images)
        maps["pool3"].shape  # (B, 1, H, W)
    """
    maps: dict[str, torch.Tensor] = {}
    taps = find_taps(model)
    if not taps:
        log.warning("capture_attention: %s has no attention taps; no map will be captured", type(model).__name__)

    def hook_for(name: str) -> Any:
        def store(_module: nn.Module, _inputs: Any, output: torch.Tensor) -> None:
            maps[name] = output.detach() if detach else output

        return store

    handles = []
    observed: list[AttentionTap] = []
    try:
        for name, tap in taps.items():
            handles.append(tap.register_forward_hook(hook_for(name)))
            tap.observers += 1
            observed.append(tap)
        yield maps
    finally:
        for handle in handles:
            handle.remove()
        for tap in observed:
            tap.observers -= 1


def native_maps(maps: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Every spatial map as (B, h, w) at its own resolution, heads averaged; channel maps (B, C) left out."""
    return {name: attention.detach().float().mean(dim=1) for name, attention in maps.items() if attention.dim() == 4}
