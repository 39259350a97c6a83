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


def test_models_lists_every_model_with_its_size(capsys):
    assert cli.main(["models", "--num-classes", "1000"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rows = {line.split()[0]: line.split() for line in lines[1:-1]}
    assert sorted(rows) == attnscope.list_models()
    assert rows["resnet50"][1] == "25.56M" and rows["resnet50"][2] == "3x224x224"
    assert rows["attn_vgg16_bn"][3] == "2"  # two attention taps: pool3 and pool4
    assert lines[-1] == "(parameters with a 1000-class head)"
