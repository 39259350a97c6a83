"""Benchmarks run as ``python -m benchmarks.NAME`` from the repository root, as a user runs them."""

import functools
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def bench(name: str) -> list[str]:
    """The command that runs benchmark ``name``."""
    return [sys.executable, "-m", f"benchmarks.{name}"]


run_in_root = functools.partial(subprocess.run, cwd=ROOT)
