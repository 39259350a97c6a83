"""The result tables of the README and the docs are what the benchmark results give; a stale one is noticed."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
README_TOOL = [sys.executable, "-m", "benchmarks.readme"]


def test_every_generated_table_of_the_docs_is_up_to_date():
    result = subprocess.run([*README_TOOL, "--check"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    blocks = sum(path.read_text().count("<!-- table: ") for path in (ROOT / "docs").rglob("*.md"))
    assert blocks >= 15


def test_a_stale_table_is_reported_then_rewritten(tmp_path):
    command = "python -m benchmarks.robustness --table benchmarks/results/robustness-cpu.jsonl"  # a quick one
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n<!-- table: {command} -->\n| old |\n<!-- /table -->\nafter\n")
    check = subprocess.run([*README_TOOL, "--readme", str(readme), "--check"], capture_output=True, text=True, cwd=ROOT)
    assert check.returncode == 1 and f"out of date in README.md: {command}" in check.stderr
    subprocess.run([*README_TOOL, "--readme", str(readme)], check=True, capture_output=True, cwd=ROOT)
    fresh = subprocess.run([sys.executable, *command.split()[1:]], cwd=ROOT, capture_output=True, text=True).stdout
    assert readme.read_text() == f"# x\n\n<!-- table: {command} -->\n{fresh}<!-- /table -->\nafter\n"
