"""The one error hierarchy of attnscope.

Every error the library raises on purpose derives from :class:`AttnscopeError`, so
a caller (the CLI above all) can tell a user's mistake from a bug. Messages name
the file, the row or the option at fault and say what would fix it.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterable
from typing import Any


class AttnscopeError(Exception):
    """Base class of every error attnscope raises on purpose."""


class ConfigError(AttnscopeError, ValueError):
    """An option, name or combination of settings is not valid."""


class DataError(AttnscopeError):
    """Input data (a file, a row, an image) cannot be used as it is."""


class CheckpointError(AttnscopeError):
    """A checkpoint or weight file is missing, corrupt or does not fit the model."""


class TrainingError(AttnscopeError):
    """Training cannot go on as configured (for example the loss became NaN or infinite)."""


class RetrievalError(AttnscopeError):
    """A similarity index is missing, damaged, or does not match the model or the queries."""


_SHOWN = reprlib.Repr()  # its limits are set one by one: Python 3.11's Repr takes no arguments
_SHOWN.maxlevel, _SHOWN.maxdict, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxset = 3, 4, 4, 4, 4
_SHOWN.maxstring, _SHOWN.maxlong, _SHOWN.maxother = 80, 40, 80


def shown(value: Any) -> str:
    """``repr(value)`` cut short: what a message repeats of a user's input stays a line, whatever the input
    (a value of many nested levels, or one that YAML aliases expand a billion-fold)."""
    return _SHOWN.repr(value)


def is_number(value: Any) -> bool:
    """An int or a float, not a bool (YAML reads ``yes`` as True, which is no number of epochs)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_option(key: str, value: Any, ok: Callable[[Any], bool], rule: str) -> None:
    """Raise ConfigError ``key=value rule`` unless ``ok(value)``: how every config value is checked at load."""
    try:
        good = bool(ok(value))
    except (TypeError, ValueError):
        good = False
    if not good:
        raise ConfigError(f"{key}={shown(value)} {rule}")


def refuse_unknown(where: str, values: Any, known: Iterable[str]) -> None:
    """Raise ConfigError unless ``values`` is a mapping whose keys are all ``known``, naming the others."""
    names = sorted(known)
    if not isinstance(values, dict):
        raise ConfigError(f"{where} must be a mapping of option: value, got {shown(values)}")
    unknown = sorted(str(key) for key in values if key not in names)
    if unknown:
        raise ConfigError(f"{where} has no option(s) {shown(unknown)}; its options are: {', '.join(names)}")
