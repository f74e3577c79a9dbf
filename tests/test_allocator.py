"""The heap setting for large-tensor work: on with glibc, nested uses share it, and it is undone."""

import sys

import pytest
import torch

from workbench import allocator


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_reuse_large_buffers_nests_and_restores(monkeypatch):
    calls = []
    libc = allocator._glibc()
    if libc is None:
        pytest.skip("not glibc")

    class Recorder:  # the real libc, with its mallopt calls recorded
        def mallopt(self, what, value):
            calls.append((what, value))
            return libc.mallopt(what, value)

        def malloc_trim(self, pad):
            calls.append(("trim", pad))
            return libc.malloc_trim(pad)

    monkeypatch.setattr(allocator, "_glibc", lambda: Recorder())
    x = torch.randn(1, 4, 9, 10, 11)
    with allocator.reuse_large_buffers(mmap_threshold=1 << 28) as on:
        assert on
        with allocator.reuse_large_buffers() as inner:  # nested: no second setting
            assert inner
            y = torch.nn.functional.silu(x)
        assert calls == [(allocator._M_MMAP_THRESHOLD, 1 << 28), (allocator._M_TRIM_THRESHOLD, 64 << 20)]
    assert allocator._depth == 0
    assert calls[2:] == [(allocator._M_MMAP_THRESHOLD, allocator._DEFAULT_MMAP_MAX),
                         (allocator._M_TRIM_THRESHOLD, 2 * allocator._DEFAULT_MMAP_MAX), ("trim", 0)]
    assert torch.equal(y, torch.nn.functional.silu(x))
    with pytest.raises(RuntimeError):  # an error inside still restores the setting
        with allocator.reuse_large_buffers():
            raise RuntimeError("boom")
    assert allocator._depth == 0 and calls[-1] == ("trim", 0)


def test_reuse_large_buffers_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("WORKBENCH_MALLOC_TUNING", "0")
    with allocator.reuse_large_buffers() as on:
        assert not on


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise through glibc")
def test_release_pages_drops_a_block_of_a_live_buffer():
    """The whole pages inside one block go back to the kernel (they read as zeros, RSS falls);
    the rest of the buffer keeps its values; non-contiguous blocks are left alone."""
    import mmap

    import numpy as np

    def rss() -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * mmap.PAGESIZE

    if allocator._glibc() is None:
        pytest.skip("not glibc")
    buf = torch.from_numpy(np.full((3, 8, 256, 1024), 7.0, dtype=np.float16))  # 3 x 8 blocks of 512 KiB
    before = rss()
    released = sum(allocator.release_pages(buf[p, j]) for p in range(3) for j in range(1, 8))
    assert released >= 21 * (512 << 10) - 21 * 2 * 4096  # all but the partial pages at each block's ends
    assert before - rss() > 0.8 * released
    assert torch.all(buf[:, 0] == 7.0)  # the kept block is intact
    assert float(buf[1, 3, 10:-10].float().abs().max()) == 0.0  # the released block's inside is gone
    assert allocator.release_pages(buf[:, 0]) == 0  # not contiguous: nothing released
    assert allocator.release_pages(buf[0, 0, 0, :8]) == 0  # less than a page


def test_release_pages_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("WORKBENCH_MALLOC_TUNING", "0")
    buf = torch.ones(4, 1 << 20)
    assert allocator.release_pages(buf[1]) == 0 and torch.all(buf[1] == 1.0)
