import subprocess
import sys

import attnscope
from attnscope import ConfigError, cli


def test_version_answers_without_importing_torch():
    code = "import sys; from attnscope.cli import main\ntry:\n main(['--version'])\nexcept SystemExit: pass\nprint('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.splitlines() == [f"attnscope {attnscope.__version__}", "False"]


def test_module_entry_point_prints_help():
    result = subprocess.run([sys.executable, "-m", "attnscope", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "layers" in result.stdout and "--version" in result.stdout


def test_layers_lists_every_attention_layer(capsys):
    assert cli.main(["layers", "--options"]) == 0
    out = capsys.readouterr().out
    for name in attnscope.list_attn():
        assert any(line.startswith(name + " ") for line in out.splitlines())
    assert "rd_ratio" in out and "kernel_size" in out


def test_no_verb_prints_usage_and_fails(capsys):
    assert cli.main([]) == cli.EXIT_USAGE
    assert "usage: attnscope" in capsys.readouterr().err


def test_a_library_error_is_one_line_without_traceback(monkeypatch, capsys):
    def broken(_args):
        raise ConfigError("option --foo: bad value; use 1 or 2")

    monkeypatch.setattr(cli, "_cmd_layers", broken)
    assert cli.main(["layers"]) == cli.EXIT_ERROR
    err = capsys.readouterr().err
    assert err == "attnscope: error: option --foo: bad value; use 1 or 2\n"
