"""Small helpers the benchmark scripts share: choosing named cases, writing and reading JSON lines."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable
from pathlib import Path


def choose(parser: argparse.ArgumentParser, text: str, known: Iterable[str], what: str) -> list[str]:
    """The comma-separated names in ``text``, or a usage error naming the unknown ones and the known."""
    known = list(known)
    chosen = text.split(",")
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        parser.error(f"unknown {what}(s) {unknown}; known: {', '.join(known)}")
    return chosen


def append_records(path: str | None, records: Iterable[dict]) -> None:
    """Append one JSON object per line to ``path`` (nothing when no path is given)."""
    if path:
        with open(path, "a", encoding="utf-8") as handle:
            for record in records:
                handle.write(json.dumps(record) + "\n")


def add_result_arguments(parser: argparse.ArgumentParser) -> None:
    """``--out FILE`` (append the JSON lines there) and ``--table FILE`` (print its markdown table)."""
    parser.add_argument("--out", help="also append the JSON lines to this file")
    parser.add_argument("--table", metavar="JSONL", help="print the markdown table of a results file and stop")


def print_table(path: str | None, render: Callable[[list[dict]], str]) -> bool:
    """Print ``render`` of the records in ``path``; True when there was a ``--table`` to print."""
    if not path:
        return False
    print(render([json.loads(line) for line in Path(path).read_text().splitlines() if line]))
    return True
