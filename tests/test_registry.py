"""The one Registry type: names in order, duplicates and unknown names refused with the known ones,
options checked by name, a closed registry held to the list attnscope.names gives the command line."""

import gc

import pytest

from attnscope.errors import ConfigError
from attnscope.registry import Registry, parameter_names, registries


def shape(side: int, colour: str = "red", *args, filled: bool = False, **kw) -> str:
    return f"{colour} {side}"


def test_entries_keep_their_order_and_unknown_names_list_the_known_ones_sorted():
    shapes = Registry("shape", {"square": shape, "circle": shape}, options=parameter_names)
    assert shapes.names() == ["square", "circle"] and list(shapes) == ["square", "circle"] and len(shapes) == 2
    assert shapes.get("circle") is shape and "square" in shapes and "hexagon" not in shapes
    with pytest.raises(ConfigError, match=r"^unknown shape 'hexagon'; known shapes: circle, square$"):
        shapes.get("hexagon")
    with pytest.raises(ConfigError, match=r"^shape\.kind=3: unknown shape; known shapes: circle, square$"):
        shapes.get(3, option="shape.kind")
    with pytest.raises(ConfigError, match="a shape named 'square' is already registered"):
        shapes.register("square", shape)
    assert shapes.names() == ["square", "circle"]


def test_options_are_read_from_the_entry_and_unknown_ones_named():
    shapes = Registry("shape", {"square": shape}, options=parameter_names, option_word="setting")
    assert shapes.options("square") == ["side", "colour", "filled"]  # *args and **kw are not options
    shapes.check_options("square", {"colour": "blue", "filled": True})
    with pytest.raises(ConfigError) as refused:
        shapes.check_options("square", {"color": 1, "size": 2, "filled": True}, hint="(British spelling)", option="s")
    assert str(refused.value) == (
        "s: shape 'square' has no setting(s) ['color', 'size']; its settings are: side, colour, filled "
        "(British spelling)"
    )
    with pytest.raises(ConfigError, match="shapes take no options"):
        Registry("shape", {"square": shape}).options("square")


def test_a_closed_registry_refuses_names_off_its_list_and_says_which_are_missing():
    listed = ("square", "circle")
    shapes = Registry("shape", {"square": shape}, listed=listed)
    with pytest.raises(ConfigError, match=r"shape 'hexagon' is not in attnscope.names' list \(square, circle\)"):
        shapes.register("hexagon", shape)
    with pytest.raises(ConfigError, match="differ from attnscope.names' list .*: missing circle"):
        shapes.check_listed()
    shapes.register("circle", shape)
    shapes.check_listed()
    reordered = Registry("shape", {"circle": shape, "square": shape}, listed=listed)
    with pytest.raises(ConfigError, match="differ .*: order"):
        reordered.check_listed()


def test_registries_lists_the_live_ones_only():
    kept = Registry("kept thing")
    Registry("dropped thing")
    gc.collect()
    kinds = [registry.kind for registry in registries()]
    assert "kept thing" in kinds and "dropped thing" not in kinds
    assert kept in registries()
