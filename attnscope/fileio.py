"""Atomic file writing, and the markers that tell attnscope's own folders from a user's.

A reader sees the old file or the new one, never half of one. A folder attnscope
creates for a run or an index carries a marker file (``.attnscope``, naming its
kind); attnscope replaces a folder only when it carries the marker of the same
kind, and never deletes or replaces anything else.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from attnscope.errors import ConfigError, DataError

log = logging.getLogger(__name__)

MARKER = ".attnscope"
# every temporary file or folder attnscope makes is named .<name>.<host>~<pid>~<tag>.tmp, so that
# one left by a killed process can be told from a live one's and swept on the next start
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<host>[^~/]+)~(?P<pid>\d+)~[^/]*\.tmp$")


def temporary_prefix(name: str) -> str:
    """The start of a temporary name for ``name`` owned by this process (see :func:`sweep_temporaries`)."""
    return f".{name}.{socket.gethostname()}~{os.getpid()}~"


def is_temporary(name: str) -> bool:
    """Whether ``name`` is that of a temporary file or folder attnscope makes while writing."""
    return _TEMPORARY.match(name) is not None


def file_problem(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` is not a regular file that can be read (None when it is one), found without opening it:
    opening a FIFO or a device may block forever."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "file not found"
    except OSError as error:
        return f"cannot be read ({error.strerror or error})"
    if stat.S_ISREG(mode):
        return None
    kinds = [(stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket")]
    kinds += [(stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")]
    kind = next((name for test, name in kinds if test(mode)), "a special file")
    return f"is {kind}, not a regular file"


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, read a megabyte at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def process_gone(host: object, pid: object) -> bool:
    """True when the process ``pid`` of ``host`` is known to be gone: this host, and no such pid alive."""
    if host != socket.gethostname() or not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def sweep_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporary files and folders a killed attnscope process left in ``folder``; those removed.

    Only names of attnscope's temporary pattern whose process (same host) is gone are
    touched: a live process's work in progress and everything else are left alone.
    """
    removed: list[Path] = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        match = _TEMPORARY.match(entry.name)
        if match is None or not process_gone(match["host"], int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    if removed:
        log.warning("removed %d temporary file(s) left by a killed process in %s", len(removed), folder)
    return removed


def atomic_write(path: str | os.PathLike[str], data: bytes | str, encoding: str = "utf-8") -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder, then rename.

    The temporary file is flushed and fsynced before the rename, and removed if
    anything fails, so an interrupted write leaves the previous file intact.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode(encoding) if isinstance(data, str) else data
    descriptor, temporary = tempfile.mkstemp(dir=target.parent, prefix=temporary_prefix(target.name), suffix=".tmp")
    try:
        # mkstemp makes the file private (0600); give it the mode a plain open() would have
        os.chmod(temporary, _mode_for(target))
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except OSError as error:
        Path(temporary).unlink(missing_ok=True)
        if error.filename is None:  # a failed write names no file: name the one being written
            raise OSError(error.errno, error.strerror or str(error), str(target)) from error
        raise
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return target


def _mode_for(target: Path) -> int:
    """The existing file's permissions, or 0666 less the process's umask for a new file."""
    try:
        return target.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A text cell that a spreadsheet would run as a formula, prefixed with ``'`` (OWASP's advice on
    CSV injection); numbers and other text pass unchanged. Every CSV attnscope writes goes through it."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A CSV document of ``header`` and ``rows``, every text cell made :func:`spreadsheet_safe`."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow([spreadsheet_safe(name) for name in header])
    writer.writerows([spreadsheet_safe(cell) for cell in row] for row in rows)
    return buffer.getvalue()


def write_marker(folder: str | os.PathLike[str], kind: str, **facts: Any) -> Path:
    """Mark ``folder`` as attnscope's own ``kind`` (``run``, ``index``), with any ``facts`` about it."""
    return atomic_write(Path(folder) / MARKER, json.dumps({"kind": kind, **facts}) + "\n")


def read_marker(folder: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The marker of an attnscope folder, or None where there is none (a user's folder, a file)."""
    try:
        values = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return values if isinstance(values, dict) else None


def check_replaceable(folder: str | os.PathLike[str], kind: str, replace: bool, hint: str) -> None:
    """Refuse to write over an existing ``folder`` unless attnscope made it as ``kind`` and ``replace`` is set.

    ``hint`` says how a user asks for the replacement (e.g. ``pass --force to replace it``).
    """
    target = Path(folder)
    if not target.exists() and not target.is_symlink():
        return
    marker = read_marker(target) if target.is_dir() and not target.is_symlink() else None
    if marker is None or marker.get("kind") != kind:
        raise DataError(
            f"{target} exists and is not an attnscope {kind} (it has no {MARKER} marker of one); attnscope never "
            "replaces a folder or file it did not make: choose a new path"
        )
    if not replace:
        raise ConfigError(f"{target} already holds an attnscope {kind}; {hint}")


@contextlib.contextmanager
def atomic_directory(
    path: str | os.PathLike[str], kind: str, replace: bool = False, hint: str = "pass --force to replace it"
) -> Iterator[Path]:
    """Yield an empty sibling folder to fill; on success it becomes ``path`` in one or two renames.

    The folder is marked as attnscope's ``kind``. An existing ``path`` is replaced only
    when it is attnscope's own ``kind`` and ``replace`` is set (:func:`check_replaceable`).
    Readers see the old folder or the new one. If the block fails, the partial
    folder is removed and ``path`` is left as it was. Between the two renames
    (the old folder moved aside, the new one not yet in place) a crash leaves the
    old folder beside ``path`` as ``.<name>.old-*``, whole, not deleted.
    """
    target = Path(path)
    check_replaceable(target, kind, replace, hint)
    target.parent.mkdir(parents=True, exist_ok=True)
    sweep_temporaries(target.parent)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=temporary_prefix(target.name), suffix=".tmp"))
    try:
        os.chmod(staging, 0o777 & ~_umask())
        yield staging
        write_marker(staging, kind)
        if target.exists():
            aside = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
            os.replace(target, aside / target.name)
            os.replace(staging, target)
            shutil.rmtree(aside)
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask
