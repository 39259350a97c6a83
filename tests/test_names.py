"""attnscope.names is the one list of every choice: the registries and the command line read it."""

import subprocess
import sys

import pytest

from attnscope import cli, names


def test_every_closed_registry_holds_exactly_the_names_listed():
    import attnscope.layers.registry
    import attnscope.models  # noqa: F401  (their registries are open: users add models and layers)
    from attnscope.data.sources.registry import SOURCES
    from attnscope.explain.explainer import METHODS
    from attnscope.explain.methods import MAP_METHODS
    from attnscope.registry import registries
    from attnscope.retrieval.index import KINDS

    closed = [registry for registry in registries() if registry.listed is not None]
    assert sorted(registry.kind for registry in closed) == ["data source", "index kind", "map method"]
    for registry in closed:
        registry.check_listed()
    assert SOURCES.names() == list(names.DATA_SOURCES)
    assert MAP_METHODS.names() == [*names.CAM_METHODS, *names.PIXEL_METHODS, *names.TRANSFORMER_METHODS]
    assert METHODS == ("attention", *names.CAM_METHODS, *names.PIXEL_METHODS, *names.TRANSFORMER_METHODS)
    assert set(names.DEFAULT_EXPLAIN_METHODS) <= set(METHODS)
    assert KINDS.names() == list(names.INDEX_KINDS)
    assert {name: kind.defaults for name, kind in KINDS.items()} == names.INDEX_PARAMS
    open_ = {registry.kind for registry in registries() if registry.listed is None}
    assert {"attention layer", "model"} <= open_


@pytest.mark.parametrize(
    "setting, listed",
    [
        ("optim.name", names.OPTIMIZERS),
        ("schedule.name", names.SCHEDULES),
        ("loss.name", names.LOSSES),
        ("loss.alpha_mode", names.FOCAL_ALPHA_MODES),
        ("trainer.mode", names.MONITOR_MODES),
    ],
)
def test_the_config_accepts_exactly_the_listed_names(setting, listed):
    from attnscope import ConfigError
    from attnscope.engine.config import load_config

    for value in listed:
        load_config(None, [f"{setting}={value}"])
    with pytest.raises(ConfigError, match=f"use one of {', '.join(listed)}"):
        load_config(None, [f"{setting}=bogus"])


def choices(verb: str, flag: str):
    parser = cli.build_parser()
    verbs = next(a for a in parser._actions if a.dest == "verb")
    action = next(a for a in verbs.choices[verb]._actions if flag in a.option_strings)
    return tuple(action.choices)


def test_the_command_line_offers_the_library_names():
    assert choices("train", "--optimizer") == names.OPTIMIZERS
    assert choices("train", "--schedule") == names.SCHEDULES
    assert choices("train", "--loss") == names.LOSSES
    assert choices("index", "--kind") == names.INDEX_KINDS
    for verb in ("evaluate", "explain", "index"):
        assert choices(verb, "--split") == names.SPLITS


def test_help_imports_nothing_heavy():
    code = (
        "import sys\nfrom attnscope.cli import main\ntry:\n main(['explain', '--help'])\nexcept SystemExit: pass\n"
        "print(sorted(m for m in ('torch', 'numpy', 'lightning', 'yaml') if m in sys.modules))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines()[-1] == "[]"
    assert "gradcam++" in result.stdout  # the method list comes from attnscope.names
