"""Small helpers the benchmark scripts share: choosing named cases, writing and reading JSON lines."""

from __future__ import annotations

import argparse
import json
import re
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


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo where there is one)."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def run_facts() -> dict:
    """Date, CPU (and whether it computes bf16 natively), threads, torch and the command line:
    what a result needs to be read and rerun."""
    import os
    import sys
    from datetime import date

    import torch

    from attnscope.training.precision import native_bf16

    return {
        "date": date.today().isoformat(),
        "machine": cpu_name(),
        "native_bf16": native_bf16("cpu"),
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "command": " ".join(["python", "-m", f"benchmarks.{Path(sys.argv[0]).stem}", *sys.argv[1:]]),
    }


def provenance(records: list[dict]) -> str:
    """One line: when, where, and the distinct commands that wrote ``records``, machine by machine.

    Records from several machines are grouped by machine, so that no figure is credited
    to a machine it was not measured on.
    """
    groups: dict[str, list[dict]] = {}
    for record in records:
        groups.setdefault(_where(record), []).append(record)
    parts = []
    for where, group in groups.items():
        dates = sorted({r["date"] for r in group if "date" in r})
        commands = list(dict.fromkeys(r["command"] for r in group if "command" in r))
        ran = "; ".join(f"`{c}`" for c in commands) if commands else "(command not recorded)"
        parts.append(f"{' to '.join(dict.fromkeys([dates[0], dates[-1]])) if dates else '?'} on {where}, by {ran}")
    return f"Measured {'; and '.join(parts)}."


def short_cpu(record: dict) -> str:
    """The CPU's model name without trademark signs and filler: "Intel Xeon", "AMD EPYC 7B13"."""
    name = re.sub(r"\((R|TM)\)| Processor| CPU @.*|\s+\d+-Core.*", "", record.get("machine", "?"))
    return " ".join(name.split())


def native_bf16_text(record: dict) -> str | None:
    """ "yes" or "no" for a record's ``native_bf16``; None where the record predates the field."""
    return {True: "yes", False: "no"}.get(record.get("native_bf16"))


def _where(record: dict) -> str:
    answer = native_bf16_text(record)
    bf16 = f" (native bf16: {answer})" if answer else ""
    return (
        f"{record.get('machine', '?')}{bf16}, {record.get('cpu_count', '?')} CPUs, "
        f"{record.get('threads', '?')} threads, torch {record.get('torch', '?')}"
    )
