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
