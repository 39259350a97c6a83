"""Models by name: ``create_model(name, num_classes=..., in_chans=..., pretrained=...)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import torch

from attnscope.errors import ConfigError
from attnscope.layers._utils import check_positive
from attnscope.layers.tap import find_taps
from attnscope.models.base import AttnClassifier, ModelConfig
from attnscope.models.weights import load_pretrained
from attnscope.registry import Registry, parameter_names

Builder = Callable[..., AttnClassifier]
B = TypeVar("B", bound=Builder)


@dataclass(frozen=True)
class ModelEntry:
    """A registered model: its builder, its config, and where its options are read from.

    ``options_of`` is the model class for models registered with :func:`register_class`
    (its constructor's keyword options, up through the classes it passes ``**options``
    to, are the model's); for a plain builder function it is the builder itself.
    """

    builder: Builder
    config: ModelConfig
    options_of: Callable[..., object] | None = None
    fixed: tuple[str, ...] = ()

    def options(self) -> list[str]:
        """Keyword options the model takes beyond num_classes and in_chans."""
        source = self.options_of or self.builder
        skipped = {"num_classes", "in_chans", *self.fixed}
        return [name for name in signature_options(source) if name not in skipped]


def signature_options(source: Callable[..., object]) -> list[str]:
    """Named parameters of a function, or of a class's constructor followed up the classes that
    a ``**options`` parameter forwards to (a subclass passing its options to its base)."""
    if not isinstance(source, type):
        return parameter_names(source)
    names: list[str] = []
    for cls in source.__mro__:
        if "__init__" not in vars(cls):
            continue
        init_parameters = list(inspect.signature(vars(cls)["__init__"]).parameters.values())[1:]
        names += [
            p.name for p in init_parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and p.name not in names
        ]
        if not any(p.kind == p.VAR_KEYWORD for p in init_parameters):
            break
    return names


MODELS = Registry[ModelEntry]("model", options=ModelEntry.options)


def register_model(config: ModelConfig) -> Callable[[B], B]:
    """Register a builder ``(num_classes, in_chans, **options) -> model`` under ``config.name``."""

    def register(builder: B) -> B:
        _add(ModelEntry(builder, config))
        return builder

    return register


def register_class(
    config: ModelConfig,
    model_class: type[AttnClassifier],
    fixed: dict[str, object] | None = None,
    defaults: dict[str, object] | None = None,
) -> None:
    """Register ``model_class`` under ``config.name``: its constructor's options are the model's.

    ``fixed`` arguments (an architecture's layout) are not options; ``defaults`` are this
    variant's own defaults (a tiny width, the attention a named variant carries).
    """
    fixed, defaults = dict(fixed or {}), dict(defaults or {})

    def build(num_classes: int, in_chans: int, **options: object) -> AttnClassifier:
        return model_class(**fixed, num_classes=num_classes, in_chans=in_chans, **{**defaults, **options})

    build.__name__ = build.__qualname__ = config.name
    _add(ModelEntry(build, config, model_class, tuple(fixed)))


def _add(entry: ModelEntry) -> None:
    MODELS.register(entry.config.name, entry)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(MODELS)


def model_entry(name: str) -> ModelEntry:
    """The entry registered under ``name``; a ConfigError (a ValueError) lists the known ones."""
    return MODELS.get(name)


def create_model(
    name: str,
    num_classes: int = 2,
    in_chans: int = 3,
    pretrained: bool | str | Path = False,
    **options: object,
) -> AttnClassifier:
    """Build the registered model ``name``.

    Args:
        name: a registered model (:func:`list_models`).
        num_classes: the classifier's outputs.
        in_chans: input channels (1 for grey images: pretrained first filters are summed).
        pretrained: ``False``; ``True`` for torchvision's published ImageNet file of the backbone (fetched
            once, hash checked, cached by torch.hub); or a local torchvision-format ``.pth``/``.safetensors``.
        **options: the model builder's options.

    Returns:
        The model: logits out, attention maps captured by its taps.

    Raises:
        ConfigError: an unknown name or an option the builder does not take, named.
        CheckpointError: a weights file that does not fit the model.
    """
    entry = model_entry(name)
    check_positive("num_classes", num_classes)
    check_positive("in_chans", in_chans)
    MODELS.check_options(name, options)
    if not (isinstance(pretrained, (bool, str, Path))):
        raise ConfigError(f"pretrained must be False, True or a path, got {pretrained!r}")
    model = entry.builder(num_classes=num_classes, in_chans=in_chans, **options)
    config = model.resolve_config(entry.config.for_input(in_chans))
    model.default_cfg = replace(config, attention_taps=tuple(find_taps(model)))
    if pretrained is not False:
        load_pretrained(model, pretrained)
    return model


def model_summary(name: str, num_classes: int = 1000) -> dict[str, Any]:
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
