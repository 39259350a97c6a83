"""Every key of the run config with its type, default and meaning, read from the config dataclasses.

The meaning of a key is the entry of its section's ``Attributes:`` docstring (Google style), so the
reference page and the code cannot drift: a key without one is refused by :func:`config_keys`.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from dataclasses import dataclass
from typing import Any

from attnscope.errors import ConfigError

_ENTRY = re.compile(r"^(?P<name>\w+): (?P<text>.*)$")


@dataclass(frozen=True)
class ConfigKey:
    """One settable key: its dotted name, type as written in the code, default value and meaning."""

    key: str
    type: str
    default: Any
    meaning: str


def field_meanings(cls: type) -> dict[str, str]:
    """Field name -> its entry in the ``Attributes:`` section of ``cls``'s docstring (continuation lines
    joined)."""
    lines = inspect.cleandoc(cls.__doc__ or "").splitlines()
    if "Attributes:" not in lines:
        return {}
    meanings: dict[str, str] = {}
    name = None
    for line in lines[lines.index("Attributes:") + 1 :]:
        if line and not line.startswith(" "):
            break
        match = _ENTRY.match(line.strip()) if line.startswith("    ") and not line.startswith("     ") else None
        if match:
            name = match["name"]
            meanings[name] = match["text"]
        elif name and line.strip():
            meanings[name] += " " + line.strip()
    return meanings


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def config_keys(cls: type | None = None, prefix: str = "") -> list[ConfigKey]:
    """The keys of ``cls`` (default: the whole run config), sections unfolded into their own keys in order.

    Raises:
        ConfigError: a field has no meaning in its class's ``Attributes:`` section.
    """
    if cls is None:
        from attnscope.engine.config import RunConfig

        cls = RunConfig
    meanings = field_meanings(cls)
    keys: list[ConfigKey] = []
    for field in dataclasses.fields(cls):
        key = prefix + field.name
        if field.name not in meanings:
            raise ConfigError(f"config key {key} has no meaning in the Attributes section of {cls.__name__}")
        default = _default(field)
        keys.append(ConfigKey(key, str(field.type), default, meanings[field.name]))
        if dataclasses.is_dataclass(default):
            keys.extend(config_keys(type(default), key + "."))
    return keys
