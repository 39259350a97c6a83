"""attnscope installs from a built wheel into a fresh virtual environment, with its extras, and runs there:
the wheel carries the shipped configs and the served page, and nothing of the clone is needed."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WHEELS = Path("/opt/wheels")  # the project's machines keep torch's CPU build here (the Makefile's WHEELS)
pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def run(command: list[str], cwd: Path, timeout: int = 900) -> str:
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, command))}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_a_wheel_installs_with_its_extras_in_a_fresh_environment_and_runs_the_demo(tmp_path):
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        ROOT,
    )
    wheel = next(tmp_path.glob("attnscope-*.whl"))
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert {"attnscope/configs/demo.yaml", "attnscope/configs/chest_xray.yaml", "attnscope/serve/page.html"} <= shipped
    assert not any(name.startswith(("tests/", "benchmarks/", "docs/")) for name in shipped)

    env = tmp_path / "env"
    run([sys.executable, "-m", "venv", str(env)], tmp_path)
    pip = [
        str(env / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        "-c",
        str(ROOT / "constraints.txt"),
    ]
    pip += ["--find-links", str(WHEELS)] if WHEELS.is_dir() else []
    run([*pip, f"{wheel}[serve,export,dicom]"], tmp_path)

    away = tmp_path / "elsewhere"  # not the clone: the installed package must stand alone
    away.mkdir()
    attnscope = str(env / "bin" / "attnscope")
    assert run([attnscope, "--version"], away).startswith("attnscope ")
    imported = run(
        [
            str(env / "bin" / "python"),
            "-c",
            "import attnscope.serve.app, attnscope.engine.export, pydicom, attnscope; print(attnscope.__file__)",
        ],
        away,
    )
    assert str(env) in imported and str(ROOT) not in imported
    demo = [attnscope, "demo", "--out", str(away / "demo"), "--epochs", "1", "--no-progress",
            "--set", "data.source_options={count: 200, size: 40}", "--set", "data.image_size=32"]  # fmt: skip
    printed = run(demo, away, timeout=900)
    assert "demo finished in" in printed and "attnscope serve" in printed
    for made in ("report.html", "config.yaml", "checkpoints/best.safetensors"):
        assert (away / "demo" / made).is_file(), made
