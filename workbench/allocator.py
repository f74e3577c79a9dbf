"""Keep large freed buffers in the process heap while a network runs on big CPU tensors.

glibc's ``malloc`` serves every request above its mmap threshold (at most 32 MB) with a
fresh ``mmap``, and returns it to the kernel on ``free``. A network forward pass on a
72 x 72 x 80 tile allocates a 40-110 MB tensor for nearly every op, so each op first
page-faults its whole output into existence: measured on a 2-core EPYC, the default DWI
network spent half of its 1.5 s per tile doing that. Raising the mmap threshold (and the
heap-trim threshold) for the duration of the work lets the freed buffers be reused:
1.5 -> 1.0 s per tile, for ~0.25 GB more peak memory while it runs; on exit the thresholds go
back to glibc's largest defaults and ``malloc_trim`` hands the free heap back.

Intel's PyTorch CPU tuning guide gets the same effect by preloading jemalloc or tcmalloc;
this does it without a preload, and only where it pays. Linux with glibc only; a no-op
elsewhere, or with ``WORKBENCH_MALLOC_TUNING=0``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import threading
from typing import Iterator, Optional

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
#: glibc's dynamic thresholds stop growing here (64-bit): what they are restored to
_DEFAULT_MMAP_MAX = 32 << 20

_lock = threading.Lock()
_depth = 0


def _glibc() -> Optional[ctypes.CDLL]:
    if not sys.platform.startswith("linux") or os.environ.get("WORKBENCH_MALLOC_TUNING", "1") == "0":
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") and hasattr(libc, "gnu_get_libc_version")):
        return None  # e.g. musl
    return libc


@contextlib.contextmanager
def reuse_large_buffers(mmap_threshold: int = 256 << 20, trim_threshold: int = 64 << 20) -> Iterator[bool]:
    """Within the block, buffers up to ``mmap_threshold`` bytes come from (and go back to) the heap.

    Nested and concurrent uses share one setting; the outermost exit restores it. Yields
    whether the setting is active (False where the C library is not glibc).
    """
    global _depth
    libc = _glibc()
    if libc is None:
        yield False
        return
    with _lock:
        if _depth == 0:
            libc.mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))
            libc.mallopt(_M_TRIM_THRESHOLD, int(trim_threshold))
        _depth += 1
    try:
        yield True
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, _DEFAULT_MMAP_MAX)
                libc.mallopt(_M_TRIM_THRESHOLD, 2 * _DEFAULT_MMAP_MAX)
                libc.malloc_trim(0)
