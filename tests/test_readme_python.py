"""The README's "Use from Python" example runs as written and does what it says."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def python_example() -> str:
    section = README.read_text(encoding="utf-8").split("## Use from Python", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


@pytest.mark.e2e
def test_the_python_example_trains_evaluates_explains_indexes_and_reports(tmp_path):
    environment = dict(os.environ, OMP_NUM_THREADS="1", XDG_CACHE_HOME=str(tmp_path / "cache"))
    result = subprocess.run(
        [sys.executable, "-c", python_example()],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=environment,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    auc = float(re.match(r"test AUC (\S+), sensitivity (\S+)", lines[0]).group(1))
    assert 0 <= auc <= 1
    assert "'attention:pool3'" in lines[1] and "'gradcam'" in lines[1]
    run = tmp_path / "runs" / "python"
    train_rows = sum(1 for line in (run / "split.csv").read_text().splitlines() if line.endswith(",train"))
    assert lines[2] == f"{train_rows} images indexed; {run / 'report.html'}".replace(str(tmp_path) + "/", "")
    for name in ("evaluation/metrics.json", "explain/scores.csv", "index/index.json", "report.html"):
        assert (run / name).is_file(), name
