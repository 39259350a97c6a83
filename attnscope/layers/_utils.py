"""Small helpers shared by the attention layers: channel rounding and activations."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from attnscope.errors import ConfigError

LayerSpec = str | type[nn.Module] | nn.Module | Callable[[torch.Tensor], torch.Tensor] | None


def make_divisible(value: float, divisor: int = 8, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round ``value`` to the nearest multiple of ``divisor``, at least ``min_value``.

    When rounding down would lose more than ``1 - round_limit`` of the value, one
    more ``divisor`` is added (the convention of MobileNet/timm channel counts).
    """
    if divisor < 1:
        raise ConfigError(f"rd_divisor must be >= 1, got {divisor}")
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


class HardSigmoid(nn.Module):
    """relu6(x + 3) / 6, the gate of MobileNetV3 and timm's ``hard_sigmoid``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu6(x + 3.0) / 6.0


class _Function(nn.Module):
    """Wraps a plain tensor function so it can sit in a module tree."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def extra_repr(self) -> str:
        return getattr(self.fn, "__name__", repr(self.fn))


_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "relu6": lambda: nn.ReLU6(inplace=True),
    "gelu": nn.GELU,
    "silu": lambda: nn.SiLU(inplace=True),
    "swish": lambda: nn.SiLU(inplace=True),
    "mish": nn.Mish,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "hard_sigmoid": HardSigmoid,
    "identity": nn.Identity,
}


def list_activations() -> list[str]:
    """Names accepted wherever an ``act_layer`` or ``gate_layer`` is asked for."""
    return sorted(_ACTIVATIONS)


def make_activation(spec: LayerSpec, option: str) -> nn.Module:
    """Build an activation module from a name, a module class, a module, or a function.

    ``option`` names the argument in error messages (for example ``gate_layer``).
    """
    if spec is None:
        return nn.Identity()
    if isinstance(spec, str):
        factory = _ACTIVATIONS.get(spec.lower())
        if factory is None:
            raise ConfigError(f"{option}={spec!r} is not a known activation; use one of {list_activations()}")
        return factory()
    if isinstance(spec, nn.Module):
        return spec
    if isinstance(spec, type) and issubclass(spec, nn.Module):
        return spec()
    if callable(spec) and not isinstance(spec, type):
        return _Function(spec)
    raise ConfigError(
        f"{option} must be an activation name, an nn.Module class or instance, or a function; got {spec!r}"
    )


def check_positive(option: str, value: int) -> None:
    """Raise a ConfigError naming ``option`` unless ``value`` is a positive integer."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{option} must be a positive integer, got {value!r}")
