"""Models by name: ``create_model(name, num_classes=..., in_chans=..., pretrained=...)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

import torch

from attnscope.errors import ConfigError
from attnscope.layers._utils import check_positive
from attnscope.layers.tap import find_taps
from attnscope.models.base import AttnClassifier, ModelConfig
from attnscope.models.weights import load_pretrained

Builder = Callable[..., AttnClassifier]
B = TypeVar("B", bound=Builder)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder and its config."""

    builder: Builder
    config: ModelConfig

    def options(self) -> list[str]:
        """Keyword options the builder takes beyond num_classes and in_chans."""
        parameters = inspect.signature(self.builder).parameters.values()
        return [p.name for p in parameters if p.name not in ("num_classes", "in_chans") and p.kind != p.VAR_KEYWORD]


_MODELS: dict[str, ModelEntry] = {}


def register_model(config: ModelConfig) -> Callable[[B], B]:
    """Register a builder ``(num_classes, in_chans, **options) -> model`` under ``config.name``."""

    def register(builder: B) -> B:
        if config.name in _MODELS:
            raise ConfigError(f"a model named {config.name!r} is already registered")
        _MODELS[config.name] = ModelEntry(builder, config)
        return builder

    return register


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def model_entry(name: str) -> ModelEntry:
    """The entry registered under ``name``; a ConfigError (a ValueError) lists the known ones."""
    entry = _MODELS.get(name) if isinstance(name, str) else None
    if entry is None:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return entry


def create_model(
    name: str,
    num_classes: int = 2,
    in_chans: int = 3,
    pretrained: bool | str | Path = False,
    **options: object,
) -> AttnClassifier:
    """Build the registered model ``name``.

    ``pretrained``: ``False``; ``True`` for torchvision's published ImageNet file of
    the backbone (downloaded once, hash checked, cached by torch.hub); or a path to
    a local torchvision-format ``.pth``/``.safetensors`` file. ``options`` go to the
    model's builder; one it does not take is refused by name.
    """
    entry = model_entry(name)
    check_positive("num_classes", num_classes)
    check_positive("in_chans", in_chans)
    unknown = sorted(set(options) - set(entry.options()))
    if unknown:
        raise ConfigError(f"model {name!r} has no option(s) {unknown}; its options are: {', '.join(entry.options())}")
    if not (isinstance(pretrained, (bool, str, Path))):
        raise ConfigError(f"pretrained must be False, True or a path, got {pretrained!r}")
    model = entry.builder(num_classes=num_classes, in_chans=in_chans, **options)
    config = model.resolve_config(entry.config.for_input(in_chans))
    model.default_cfg = replace(config, attention_taps=tuple(find_taps(model)))
    if pretrained is not False:
        load_pretrained(model, pretrained)
    return model


def model_summary(name: str, num_classes: int = 1000) -> dict[str, object]:
    """Name, paper, parameter count, input size, attention taps and weight source of a model.

    The model is built on the meta device: the count is exact and nothing is allocated.
    """
    entry = model_entry(name)
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes)
    config = model.default_cfg
    return {
        "model": name,
        "params": sum(p.numel() for p in model.parameters()),
        "num_classes": num_classes,
        "input_size": list(config.input_size),
        "attention_taps": len(config.attention_taps),
        "pretrained": "torchvision ImageNet" if config.url else "none",
        "paper": entry.config.paper,
    }
