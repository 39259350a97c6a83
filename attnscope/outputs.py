"""Where attnscope may write an output, and what it may write over.

An output file (a predictions CSV, a report, an ONNX model, a neighbours CSV) is
written where nothing is, or over a regular file that the same kind of output
wrote before, recognised by its content (a CSV's header, a page's generator tag,
a model's metadata); ``force`` also allows another regular file, but never one
inside a folder attnscope made (a run, an index, staged training), where only its
own outputs may be replaced. Nothing is ever written over a link, a folder, a
FIFO or a device, or through a link.

An output folder (an evaluation, an explanation) is written where nothing is,
into an empty folder, or into one that the same kind of output wrote before (its
marker, or nothing in it but the names that output writes); never through a link.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from attnscope.errors import DataError
from attnscope.fileio import MARKER, file_problem, is_temporary, read_marker, write_marker
from attnscope.htmlpage import GENERATOR

HEAD_BYTES = 4096


@dataclass(frozen=True)
class FileOutput:
    """A kind of output file: what to call it, its suffixes, and how to recognise one written before."""

    name: str
    suffixes: tuple[str, ...]
    recognise: Callable[[Path], bool]


@dataclass(frozen=True)
class FolderOutput:
    """A kind of output folder: its marker's kind, and the names that it writes (files and subfolders)."""

    kind: str
    names: frozenset[str]
    suffixes: tuple[str, ...] = ()
    subfolders: tuple[str, ...] = ()

    def owns(self, name: str) -> bool:
        return name == MARKER or name in self.names or name.endswith(self.suffixes) or is_temporary(name)


def _head(path: Path) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(HEAD_BYTES)


def csv_header(path: Path) -> list[str]:
    """The first row of a CSV file (empty when it is not text)."""
    try:
        first = _head(path).decode("utf-8-sig").splitlines()[:1]
    except UnicodeDecodeError:
        return []
    return next(csv.reader(first), []) if first else []


def is_attnscope_page(path: Path) -> bool:
    """An HTML page attnscope wrote: its generator tag, or (pages written before the tag) its title."""
    head = _head(path).decode("utf-8", "replace")
    tagged = f'<meta name="generator" content="{GENERATOR}">' in head
    return head.startswith("<!DOCTYPE html>") and (tagged or "<title>attnscope" in head)


def _is_predictions_csv(path: Path) -> bool:
    header = csv_header(path)
    columns = header[2:-1]
    return header[:2] == ["id", "path"] and header[-1:] == ["predicted"] and all(c.startswith("prob_") for c in columns)


NEIGHBOUR_COLUMNS = ("query", "query_path", "rank", "id", "label", "similarity", "path")


def _is_neighbours_csv(path: Path) -> bool:
    return tuple(csv_header(path)[: len(NEIGHBOUR_COLUMNS)]) == NEIGHBOUR_COLUMNS


def _is_attnscope_onnx(path: Path) -> bool:
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not a model at all: not ours
        return False
    return any(prop.key == "attnscope_version" for prop in model.metadata_props)


def _is_bad_rows_csv(path: Path) -> bool:
    return csv_header(path) == ["source", "row", "id", "reason"]


BAD_ROWS = FileOutput("bad-rows CSV", (".csv",), _is_bad_rows_csv)
PREDICTIONS = FileOutput("predictions CSV", (".csv",), _is_predictions_csv)
NEIGHBOURS = FileOutput("neighbours CSV", (".csv",), _is_neighbours_csv)
PAGE = FileOutput("HTML page", (".html", ".htm"), is_attnscope_page)
ONNX_MODEL = FileOutput("ONNX model", (".onnx",), _is_attnscope_onnx)

EVALUATION = FolderOutput("evaluation", frozenset({"metrics.json", "bad_rows.csv", "folds.json"}), suffixes=(".png",))
EXPLANATION = FolderOutput(
    "explanation",
    frozenset({"scores.csv", "bad_rows.csv", "sanity.json", "overlays", "maps"}),
    subfolders=("overlays", "maps"),
)

COMPARISON = FolderOutput("comparison", frozenset({"comparison.json", "comparison.html"}))
ATTNSCOPE_FOLDERS = ("run", "index", "stages", "folds", EVALUATION.kind, EXPLANATION.kind, COMPARISON.kind)


def _ancestors(path: Path) -> Iterator[Path]:
    absolute = Path(os.path.abspath(path))
    yield from absolute.parents


def enclosing_attnscope_folder(path: Path) -> tuple[Path, str] | None:
    """The nearest folder above ``path`` that attnscope made (a run, an index, ...), and its kind."""
    for folder in _ancestors(path):
        marker = read_marker(folder)
        if marker is not None and marker.get("kind") in ATTNSCOPE_FOLDERS:
            return folder, str(marker["kind"])
    return None


def _refuse(path: Path, why: str, fix: str) -> DataError:
    return DataError(f"{path}: {why}; attnscope never writes over what it did not make: {fix}")


def check_output_file(path: str | os.PathLike[str], output: FileOutput, force: bool = False) -> Path:
    """``path`` when ``output`` may be written there (see the module's rules), else a DataError naming it."""
    target = Path(path)
    if target.is_symlink():
        raise _refuse(target, "is a symbolic link", "give the path of a new file or of the real one")
    enclosing = enclosing_attnscope_folder(target)
    if enclosing is not None:
        below = [
            folder for folder in _ancestors(target) if folder != enclosing[0] and folder.is_relative_to(enclosing[0])
        ]
        linked = next((folder for folder in below if folder.is_symlink()), None)
        if linked is not None:
            raise _refuse(target, f"lies under {linked}, a link inside an attnscope {enclosing[1]}", "remove the link")
    if not target.exists():
        if enclosing is not None and not target.name.endswith(output.suffixes):
            where = f"inside the attnscope {enclosing[1]} {enclosing[0]}"
            raise _refuse(target, f"is {where}, and not a {output.name} name", f"name it *{output.suffixes[0]}")
        return target
    problem = file_problem(target)
    if problem is not None:
        raise _refuse(target, problem, f"choose a new file for the {output.name}")
    if output.recognise(target):
        return target
    if enclosing is not None:
        where = f"belongs to the attnscope {enclosing[1]} {enclosing[0]}"
        raise _refuse(target, f"{where} and is not a {output.name} it wrote", "choose a new file")
    if force:
        return target
    raise _refuse(
        target, f"exists and is not a {output.name} attnscope wrote", "choose a new file, or pass --force to replace it"
    )


def check_output_folder(path: str | os.PathLike[str], output: FolderOutput) -> Path:
    """``path`` when ``output`` may be written there (see the module's rules), else a DataError naming it."""
    target = Path(path)
    for folder in (target, *(target / name for name in output.subfolders)):
        if folder.is_symlink():
            raise _refuse(folder, "is a symbolic link", "give a real folder, or remove the link")
        if folder.exists() and not folder.is_dir():
            raise _refuse(folder, "exists and is not a folder", f"choose a new folder for the {output.kind}")
    if target.exists():
        marker = read_marker(target)
        if marker is not None and marker.get("kind") != output.kind:
            raise _refuse(target, f"is an attnscope {marker.get('kind')}", f"choose a new folder for the {output.kind}")
        foreign = sorted(entry.name for entry in target.iterdir() if not output.owns(entry.name))
        if marker is None and foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise _refuse(target, f"holds files attnscope did not write ({shown})", "choose a new or empty folder")
    return target


def prepare_output_folder(path: str | os.PathLike[str], output: FolderOutput) -> Path:
    """Make (or reuse) the folder ``path`` for ``output`` once :func:`check_output_folder` allows it, and mark
    it as that output's, so that a later run recognises it."""
    target = check_output_folder(path, output)
    target.mkdir(parents=True, exist_ok=True)
    if read_marker(target) is None:
        write_marker(target, output.kind)
    return target
