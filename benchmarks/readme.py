"""Regenerate the result tables of the README and the documentation from the JSON lines under benchmarks/results/.

    python -m benchmarks.readme            # rewrite every generated block of README.md and docs/*.md
    python -m benchmarks.readme --check    # exit 1 if a block differs from what its results give

A generated block sits between two markers; the first names the command that
prints it (a benchmark script and its ``--table`` file)::

    <!-- table: benchmarks/fashion_mnist.py --table benchmarks/results/fashion_mnist-cpu.jsonl -->
    | epochs | test accuracy | ...
    <!-- /table -->
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import runpy
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(<!-- table: (?P<command>.+?) -->\n)(?P<body>.*?)(<!-- /table -->)", re.DOTALL)


def render(command: str) -> str:
    """The markdown a block's command prints, run in this process from the repository root (one
    interpreter for every block: a fresh one each paid torch's import a dozen times)."""
    words = shlex.split(command)
    if words[:2] != ["python", "-m"] or len(words) < 3 or not words[2].startswith("benchmarks."):
        raise SystemExit(f"README block command {command!r}: must be python -m benchmarks.NAME ...")
    printed, saved_argv, saved_cwd = io.StringIO(), sys.argv, Path.cwd()
    sys.argv = [words[2], *words[3:]]
    try:
        os.chdir(ROOT)
        with contextlib.redirect_stdout(printed):
            runpy.run_module(words[2], run_name="__main__", alter_sys=False)
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise SystemExit(f"README block command {command!r} failed: {stop.code}") from stop
    finally:
        sys.argv = saved_argv
        os.chdir(saved_cwd)
    return printed.getvalue().rstrip("\n") + "\n"


def regenerate(text: str) -> tuple[str, list[str]]:
    """The README with every block rendered anew, and the commands whose blocks changed."""
    changed = []

    def replace(match: re.Match) -> str:
        body = render(match["command"])
        if body != match["body"]:
            changed.append(match["command"])
        return match.group(1) + body + match.group(4)

    return BLOCK.sub(replace, text), changed


def pages() -> list[Path]:
    """Every markdown file of the README and the documentation that holds a generated block."""
    found = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    return [path for path in found if BLOCK.search(path.read_text(encoding="utf-8"))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", type=Path, help="only this file (default: the README and every page of docs/)")
    parser.add_argument("--check", action="store_true", help="change nothing; fail if a block is out of date")
    args = parser.parse_args()
    files = [args.readme] if args.readme else pages()
    if not files or not any(BLOCK.search(path.read_text(encoding="utf-8")) for path in files):
        print(f"{', '.join(map(str, files)) or 'docs/'}: no generated blocks", file=sys.stderr)
        return 1
    stale = 0
    for path in files:
        updated, changed = regenerate(path.read_text(encoding="utf-8"))
        stale += len(changed)
        if args.check:
            for command in changed:
                print(f"out of date in {path.name}: {command} (run python -m benchmarks.readme)", file=sys.stderr)
        elif changed:
            from attnscope.fileio import atomic_write

            atomic_write(path, updated)
    if args.check:
        return 1 if stale else 0
    print(f"{stale} block(s) rewritten" if stale else "every block is up to date")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
