"""Small helpers the benchmark scripts share: choosing named cases, appending JSON lines."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterable


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
