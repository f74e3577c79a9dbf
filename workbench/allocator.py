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

:func:`release_pages` goes the other way: it hands the memory of part of a large array
back to the kernel while the array lives on (``madvise(MADV_DONTNEED)``), so a series-sized
buffer consumed block by block (the DWI priors, one volume after another) shrinks as it goes.
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

#: Linux's ``MADV_DONTNEED``: the pages are dropped; a later read of them gives zeros
_MADV_DONTNEED = 4

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


def release_pages(block) -> int:
    """Hand the whole memory pages inside a C-contiguous array or tensor back to the kernel.

    The caller gives up the block's contents: afterwards the whole pages inside it read as
    zeros (the partial pages at its two ends are kept). For a block of a larger buffer that
    is consumed piece by piece; the buffer itself stays allocated and valid. Returns
    the bytes released (0 on a platform without ``madvise``, for a non-contiguous or
    small block, or with ``WORKBENCH_MALLOC_TUNING=0``).
    """
    import mmap

    if hasattr(block, "data_ptr"):  # a torch tensor
        if not block.is_contiguous() or block.device.type != "cpu":
            return 0
        start, nbytes = block.data_ptr(), block.numel() * block.element_size()
    else:
        if not block.flags.c_contiguous:
            return 0
        start, nbytes = block.ctypes.data, block.nbytes
    libc = _glibc()
    if libc is None or not hasattr(libc, "madvise"):
        return 0
    page = mmap.PAGESIZE
    first, last = -(-start // page) * page, (start + nbytes) // page * page
    if last <= first:
        return 0
    if libc.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED) != 0:
        return 0
    return last - first


def trim_heap() -> None:
    """Hand the heap's free memory back to the OS (``malloc_trim``), unless a :func:`reuse_large_buffers`
    block is running (it keeps freed buffers on purpose). After work that freed many buffers between
    live ones (e.g. MP-PCA's chunks), glibc otherwise keeps the pages: a no-op elsewhere."""
    libc = _glibc()
    if libc is not None and _depth == 0:
        libc.malloc_trim(0)
