"""release_free_heap: the benchmark's heap reset really hands freed heap pages back to the OS."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

import pytest

from leanml.hw.timing import release_free_heap


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc_trim and /proc are Linux-only")
def test_release_free_heap_returns_freed_heap_pages_to_the_os():
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    chunk, count = 64 * 1024, 1024  # 64 MiB in chunks below the mmap threshold: they come from the heap
    ptrs = [libc.malloc(chunk) for _ in range(count)]
    for p in ptrs:
        ctypes.memset(p, 1, chunk)  # touch every page
    keep = ptrs.pop()  # the last chunk pins the heap top, so free() alone cannot shrink the heap
    for p in ptrs:
        libc.free(p)
    before = _rss_bytes()
    assert release_free_heap() is True
    after = _rss_bytes()
    libc.free(keep)
    assert before - after > 32 * 2**20, f"RSS fell by {(before - after) / 2**20:.1f} MiB only"
