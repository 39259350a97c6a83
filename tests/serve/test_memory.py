"""The server's heap settings: fewer arenas, freed memory given back (glibc only; elsewhere they do nothing)."""

import platform
from pathlib import Path

import pytest

from attnscope.serve.memory import give_back, limit_arenas

GLIBC = platform.libc_ver()[0] == "glibc"


def resident_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def test_the_arena_limit_is_taken_where_the_c_library_is_glibc():
    assert limit_arenas() is GLIBC


@pytest.mark.skipif(not GLIBC or not Path("/proc/self/status").exists(), reason="glibc's malloc_trim, Linux's /proc")
def test_freed_heap_memory_is_returned_to_the_system():
    # 200 MB in 1 KB pieces: below the size glibc maps on its own, so it stays in the heap once freed
    pieces = [bytearray(1024) for _ in range(200_000)]
    held = resident_mb()
    pieces.reverse()  # freed from the top of the heap down: what can be trimmed at its end is not all of it
    del pieces
    assert give_back() is True
    assert resident_mb() < held - 100
