"""Keeping the server's resident memory near what it uses, where the C library allows it (glibc).

glibc gives each thread that allocates its own heap ("arena", up to eight per
core), and keeps what is freed in it for later. A server decoding large uploads
in four threads then holds the peak of each thread's decodes at once, long after
they are done: measured on 123 MB PNGs and 64 MB float TIFFs, 960 MB resident at
the peak and 900 MB after, against 660 MB and 570 MB with two arenas.
:func:`limit_arenas` sets that number for the process; :func:`give_back` returns
freed heap memory to the system after a large decode. Elsewhere (musl, macOS)
both do nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)

M_ARENA_MAX = -8  # mallopt's parameter number, from glibc's malloc.h
SERVER_ARENAS = 2


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        library = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if library is None or not hasattr(library, "mallopt") or not hasattr(library, "malloc_trim"):
        return None
    return library


def limit_arenas(count: int = SERVER_ARENAS) -> bool:
    """Let threads share at most ``count`` heaps from now on; True where the C library took the setting."""
    library = _glibc()
    taken = bool(library is not None and library.mallopt(M_ARENA_MAX, count))
    log.debug("malloc arenas limited to %d: %s", count, taken)
    return taken


def give_back() -> bool:
    """Return freed heap memory to the system; True where some was returned."""
    library = _glibc()
    return bool(library is not None and library.malloc_trim(0))
