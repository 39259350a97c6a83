"""attnscope.names is the one list of every choice: the registries and the command line read it."""

import subprocess
import sys

import pytest

from attnscope import cli, names


def test_every_list_equals_the_registry_it_names():
    from attnscope.data.module import SOURCES
    from attnscope.explain.explainer import METHODS
    from attnscope.explain.methods import CAM_METHODS, PIXEL_METHODS
    from attnscope.retrieval.index import DEFAULT_PARAMS, KINDS

    assert set(SOURCES) == set(names.DATA_SOURCES)
    assert tuple(CAM_METHODS) == names.CAM_METHODS and tuple(PIXEL_METHODS) == names.PIXEL_METHODS
    assert METHODS == ("attention", *names.CAM_METHODS, *names.PIXEL_METHODS)
    assert set(names.DEFAULT_EXPLAIN_METHODS) <= set(METHODS)
    assert KINDS == names.INDEX_KINDS and DEFAULT_PARAMS == names.INDEX_PARAMS


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
