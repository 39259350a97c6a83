"""Data sources by name, and the check of their options: ``load_source(name, **options)``.

A source's options are its function's parameters and, for a source that reads a layout
(the CSV source's column names), that layout dataclass's fields. Options are checked by name and
by type before anything is read, so that a YAML value read as the wrong kind (a number where
text was meant) is refused with the quoting that would fix it.
"""

from __future__ import annotations

import collections.abc
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from attnscope.data.manifest import Manifest
from attnscope.data.sources.arrays import from_idx, from_medmnist
from attnscope.data.sources.chest import synthetic_chest_xrays
from attnscope.data.sources.files import CsvLayout, from_csv, from_folder
from attnscope.data.sources.synthetic import cluttered, synthetic_lesions
from attnscope.errors import ConfigError, is_integer, is_number
from attnscope.names import DATA_SOURCES
from attnscope.registry import Registry, parameter_names


def cluttered_idx(
    directory: str | None = None,
    split: str = "train",
    canvas: int = 84,
    clutter: int = 6,
    clutter_size: int = 10,
    count: int | None = None,
    seed: int = 0,
) -> Manifest:
    """Cluttered canvases of IDX items (Fashion-MNIST by default)."""
    return cluttered(from_idx(directory, split), canvas, clutter, clutter_size, count, seed)


@dataclass(frozen=True)
class Source:
    """A registered source: the function that reads it, and the dataclass whose fields are further
    options (None where its parameters are all)."""

    read: Callable[..., Manifest]
    layout: type | None = None

    def options(self) -> list[str]:
        """The options it takes: its parameters, then its layout's fields."""
        return parameter_names(self.read) + ([f.name for f in fields(self.layout)] if self.layout else [])

    def option_types(self) -> dict[str, Any]:
        """Option name -> its type hint."""
        hints = {k: v for k, v in typing.get_type_hints(self.read).items() if k != "return"}
        if self.layout is not None:
            hints |= {f.name: typing.get_type_hints(self.layout)[f.name] for f in fields(self.layout)}
        return hints


SOURCES = Registry[Source](
    "data source",
    {
        "csv": Source(from_csv, CsvLayout),
        "folder": Source(from_folder),
        "idx": Source(from_idx),
        "medmnist": Source(from_medmnist),
        "synthetic_lesions": Source(synthetic_lesions),
        "synthetic_chest_xrays": Source(synthetic_chest_xrays),
        "cluttered": Source(cluttered_idx),
    },
    options=Source.options,
    listed=DATA_SOURCES,
)


def check_source_options(name: str, options: dict[str, Any]) -> None:
    """Refuse unknown options of source ``name``, and values of the wrong kind, naming them."""
    SOURCES.check_options(name, options)
    hints = SOURCES.get(name).option_types()
    for option, value in options.items():
        if option in hints and not _fits(hints[option], value):
            read_as = "a flag" if isinstance(value, bool) else "a number" if is_number(value) else "a list or mapping"
            quote = f" (YAML read {value!r} as {read_as}: quote text, e.g. {option}='{value}')"
            raise ConfigError(
                f"data option {option}={value!r} does not fit source {name!r}: it must be "
                f"{_describe(hints[option])}{quote if not isinstance(value, str) else ''}"
            )


def load_source(name: str, **options: Any) -> Manifest:
    """The manifest of source ``name``; unknown names, options and values of the wrong kind are refused."""
    source = SOURCES.get(name)
    check_source_options(name, options)
    return source.read(**options)


def _fits(hint: Any, value: Any) -> bool:
    """Whether a config value fits a source option's type hint (paths and names must be text)."""
    origin, arguments = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(argument, value) for argument in arguments)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return is_integer(value)
    if hint is float:
        return is_number(value)
    if hint in (str, Path):
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple)) and all(_fits(arguments[0], v) for v in value) if arguments else True
    return True


def _describe(hint: Any) -> str:
    names = {str: "text", Path: "a path", int: "an integer", float: "a number", bool: "true or false"}
    arguments = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(a) for a in arguments))
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) in (list, tuple, collections.abc.Sequence):
        return f"a list of {_describe(arguments[0])}" if arguments else "a list"
    return names.get(hint, getattr(hint, "__name__", str(hint)))
