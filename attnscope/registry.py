"""One small type for every "things by name" table: layers, models, data sources, map methods, index kinds.

A :class:`Registry` maps names to entries of one kind, refuses a name registered twice, answers an
unknown name with a :class:`~attnscope.errors.ConfigError` that lists the known ones, and checks the
options a caller passes against the ones an entry takes, naming the unknown ones. A registry whose
names are a closed list that the command line offers (data sources, map methods, index kinds) is
made with that list from :mod:`attnscope.names` and refuses any other name, so the torch-free lists
that ``--help`` reads cannot drift from what the library can build; :func:`registries` lets a test
check every one. Torch-free, like ``names``.
"""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Generic, TypeVar

from attnscope.errors import ConfigError

T = TypeVar("T")

_ALL: list[weakref.ref[Registry[Any]]] = []


class Registry(Generic[T]):
    """Entries of one kind by name, in the order they were registered.

    Args:
        kind: what an entry is, in the words of an error message ("data source", "index kind").
        entries: the first entries, name -> entry, registered in their order.
        options: how to read the option names an entry takes (for :meth:`check_options`).
        listed: the closed list of names this registry must hold (from :mod:`attnscope.names`), or
            None where users may register their own (models, layers).
        option_word: what an option is called in messages ("option", or "parameter" for index kinds).
    """

    def __init__(
        self,
        kind: str,
        entries: Mapping[str, T] | None = None,
        options: Callable[[T], Sequence[str]] | None = None,
        listed: Sequence[str] | None = None,
        option_word: str = "option",
    ) -> None:
        self.kind = kind
        self.listed = None if listed is None else tuple(listed)
        self.option_word = option_word
        self._options = options
        self._entries: dict[str, T] = {}
        for name, entry in (entries or {}).items():
            self.register(name, entry)
        _ALL.append(weakref.ref(self))

    def register(self, name: str, entry: T) -> T:
        """Add ``entry`` under ``name``; a name registered before, or one off the closed list, is refused."""
        if name in self._entries:
            raise ConfigError(f"a {self.kind} named {name!r} is already registered")
        if self.listed is not None and name not in self.listed:
            raise ConfigError(f"{self.kind} {name!r} is not in attnscope.names' list ({', '.join(self.listed)})")
        self._entries[name] = entry
        return entry

    def get(self, name: object, option: str | None = None) -> T:
        """The entry registered under ``name``; an unknown one raises a ConfigError (a ValueError) that lists
        the known names, after ``option`` (the config key or flag that gave it) where one is named."""
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None:
            where = f"{option}={name!r}: unknown {self.kind}" if option else f"unknown {self.kind} {name!r}"
            raise ConfigError(f"{where}; known {self.kind}s: {', '.join(sorted(self._entries))}")
        return entry

    def names(self) -> list[str]:
        """Registered names, in the order they were registered."""
        return list(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def options(self, name: str) -> list[str]:
        """The option names the entry ``name`` takes."""
        if self._options is None:
            raise ConfigError(f"{self.kind}s take no options")
        return list(self._options(self.get(name)))

    def check_options(
        self, name: str, given: Mapping[Any, object] | Sequence[Any], hint: str = "", option: str | None = None
    ) -> None:
        """Refuse options that entry ``name`` does not take, naming them and listing the ones it does.

        ``hint`` is added to the message (why an option does not apply), ``option`` (the config key
        that gave them) put before it.
        """
        accepted = self.options(name)
        unknown = sorted({str(key) for key in given} - set(accepted))
        if unknown:
            word = self.option_word
            raise ConfigError(
                (f"{option}: " if option else "")
                + f"{self.kind} {name!r} has no {word}(s) {unknown}; its {word}s are: {', '.join(accepted) or 'none'}"
                + (f" {hint}" if hint else "")
            )

    def check_listed(self) -> None:
        """Raise where a closed registry lacks a name of its list (each name it has is checked as registered)."""
        if self.listed is not None and tuple(self._entries) != self.listed:
            missing = [name for name in self.listed if name not in self._entries]
            raise ConfigError(
                f"the {self.kind}s registered ({', '.join(self._entries)}) differ from attnscope.names' list "
                f"({', '.join(self.listed)})" + (f": missing {', '.join(missing)}" if missing else ": order")
            )

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {len(self)} entries)"


def registries() -> list[Registry[Any]]:
    """Every registry alive (those of the modules imported), in the order they were made."""
    alive = [registry() for registry in _ALL]
    return [registry for registry in alive if registry is not None]


def parameter_names(function: Callable[..., object], skip: int = 0) -> list[str]:
    """Named parameters of a function or class (``*args`` and ``**kwargs`` left out), after the first ``skip``."""
    parameters = list(inspect.signature(function).parameters.values())[skip:]
    return [p.name for p in parameters if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
