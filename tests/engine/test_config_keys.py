"""Every config key has a type, a default and a meaning read from its section's docstring."""

import dataclasses
from dataclasses import dataclass

import pytest

from attnscope.engine.config import RunConfig
from attnscope.engine.config_keys import config_keys, field_meanings
from attnscope.errors import ConfigError


def all_fields(cls, prefix=""):
    """Every dotted key of a dataclass tree, walked here independently of config_keys."""
    names = []
    for field in dataclasses.fields(cls):
        names.append(prefix + field.name)
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(default):
            names += all_fields(type(default), f"{prefix}{field.name}.")
    return names


def test_every_key_of_the_run_config_has_a_meaning_type_and_default():
    keys = config_keys()
    assert [key.key for key in keys] == all_fields(RunConfig)
    by_name = {key.key: key for key in keys}
    assert by_name["optim.lr"].default == RunConfig().optim.lr and by_name["optim.lr"].type == "float | str"
    assert by_name["data.augment.rotation"].default == 10.0
    assert by_name["trainer.threshold"].meaning.startswith("the operating point chosen on validation")
    assert all(key.meaning and not key.meaning.endswith(":") for key in keys)


def test_continuation_lines_join_their_entry_and_a_missing_meaning_is_refused():
    @dataclass
    class Section:
        """A section.

        Attributes:
            first: one line
                and its continuation.
            second: another.

        Notes:
            not an attribute: ignored.
        """

        first: int = 1
        second: str = "x"

    assert field_meanings(Section) == {"first": "one line and its continuation.", "second": "another."}

    @dataclass
    class Undocumented:
        """No attributes section."""

        key: int = 0

    with pytest.raises(ConfigError, match="config key key has no meaning in the Attributes section of Undocumented"):
        config_keys(Undocumented)
