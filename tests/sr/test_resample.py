"""Voxel-centre-aligned upsampling (Keys tricubic, linear, nearest) and area downsampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workbench.resample import downsample_area, keys_kernel, upsample

MODES = ("nearest", "linear", "cubic")


def _centres(n: int, s: int) -> torch.Tensor:
    """HR-grid coordinates of the centres of LR voxels (s > 1) or of HR voxels (s == 1)."""
    return torch.arange(n, dtype=torch.float64) * s + (s - 1) / 2


def _field(shape, s, fn):
    """``fn`` sampled at voxel centres of a grid of ``shape`` (in HR units) with block size ``s``."""
    g = torch.meshgrid(*[_centres(n, f) for n, f in zip(shape, s)], indexing="ij")
    return fn(*g)[None, None]


@pytest.mark.parametrize("mode", MODES)
def test_shapes(mode):
    x = torch.rand(1, 2, 33, 34, 35)
    assert upsample(x, 2, mode).shape == (1, 2, 66, 68, 70)
    assert upsample(x, (4, 4, 1), mode).shape == (1, 2, 132, 136, 35)
    assert upsample(torch.rand(2, 1, 9, 10), 3, mode).shape == (2, 1, 27, 30)
    assert upsample(torch.rand(2, 1, 9), 5, mode).shape == (2, 1, 45)


def test_cubic_scale_one_is_identity_and_matches_the_direct_formula():
    x = torch.rand(1, 1, 6, 7, 5, dtype=torch.float64)
    assert torch.equal(upsample(x, 1, "cubic"), x)
    y = upsample(x, (3, 2, 1), "cubic")
    torch.testing.assert_close(y[..., 0], upsample(x[..., 0], (3, 2), "cubic"))
    # direct 1D formula on the padded signal: HR j sits at LR coordinate (j + 0.5)/s - 0.5
    v, s = x[0, 0, :, 0, 0], 3
    vp = torch.cat([v[:1].repeat(2), v, v[-1:].repeat(2)])
    want = []
    for j in range(len(v) * s):
        u = (j + 0.5) / s - 0.5
        i = torch.arange(int(np.floor(u)) - 1, int(np.floor(u)) + 3)
        want.append((keys_kernel(u - i.double()) * vp[i + 2]).sum())
    torch.testing.assert_close(upsample(v[None, None], s, "cubic")[0, 0], torch.stack(want))


@pytest.mark.parametrize("s", [(2, 2, 2), (3, 3, 3), (4, 4, 1), (5, 2, 3)])
def test_cubic_reproduces_linear_and_quadratic_ramps_in_the_interior(s):
    lr_shape = (9, 8, 7)
    for fn in (lambda a, b, c: 0.3 * a - 0.2 * b + 0.1 * c + 1.0,
               lambda a, b, c: 0.02 * a**2 - 0.01 * a * b + 0.03 * c**2 - 0.05 * b):
        lr = _field(lr_shape, s, fn)
        hr = _field([n * f for n, f in zip(lr_shape, s)], (1, 1, 1), fn)
        up = upsample(lr, s, "cubic")
        inner = tuple(slice(2 * f, -2 * f) if f > 1 else slice(None) for f in s)
        torch.testing.assert_close(up[(0, 0) + inner], hr[(0, 0) + inner], atol=1e-9, rtol=0)


def test_constant_stays_constant():
    c = torch.full((1, 1, 10, 12, 14), 3.0)
    for s in (2, 3, (4, 4, 1)):
        torch.testing.assert_close(upsample(c, s, "cubic"), torch.full_like(upsample(c, s, "nearest"), 3.0))


def test_area_downsample_inverts_nearest_and_crops_to_a_multiple():
    x = torch.randint(0, 256, (2, 1, 8, 9, 10)).float() / 256  # few mantissa bits: block sums are exact
    for s in ((2, 4, 1), 3, (1, 5, 2)):
        assert torch.equal(downsample_area(upsample(x, s, "nearest"), s), x)
    assert downsample_area(torch.rand(1, 1, 33, 34, 35), 4).shape == (1, 1, 8, 8, 8)
    smooth = _field((16, 16, 16), (1, 1, 1), lambda a, b, c: torch.sin(a / 4) + torch.cos(b / 5) * c / 16)
    for mode in ("linear", "cubic"):  # on smooth data, interpolation keeps block means approximately
        back = downsample_area(upsample(smooth, 2, mode), 2)[..., 2:-2, 2:-2, 2:-2]
        torch.testing.assert_close(back, smooth[..., 2:-2, 2:-2, 2:-2], atol=0.02, rtol=0)


def test_cubic_beats_nearest_and_linear_on_a_smooth_field():
    s = (4, 4, 4)
    fn = lambda a, b, c: torch.sin(a / 5.0) * torch.cos(b / 7.0) + 0.5 * torch.sin((a + c) / 6.0)  # noqa: E731
    lr = _field((12, 12, 12), s, fn).float()
    hr = _field((48, 48, 48), (1, 1, 1), fn).float()
    err = {m: float((upsample(lr, s, m) - hr)[..., 8:-8, 8:-8, 8:-8].abs().mean()) for m in MODES}
    assert err["cubic"] < 0.5 * err["linear"] < 0.5 * err["nearest"]


def test_gradient_flows_and_bfloat16_autocast_runs():
    x = torch.rand(1, 1, 6, 6, 6, requires_grad=True)
    upsample(x, (2, 2, 1), "cubic").sum().backward()
    # each LR voxel's weights sum to s per axis in the interior (partition of unity)
    torch.testing.assert_close(x.grad[0, 0, 2:-2, 2:-2, :], torch.full((2, 2, 6), 4.0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = upsample(torch.rand(1, 1, 8, 8, 8), 2, "cubic")
    assert y.shape == (1, 1, 16, 16, 16) and torch.isfinite(y.float()).all()
    assert upsample(torch.rand(1, 1, 4, 4, 4, dtype=torch.bfloat16), 3, "cubic").dtype == torch.bfloat16


def test_bad_arguments():
    with pytest.raises(ValueError):
        upsample(torch.rand(1, 1, 4, 4, 4), 2, "bicubic")
    with pytest.raises(ValueError):
        upsample(torch.rand(1, 1, 4, 4, 4), (2, 2), "cubic")
    with pytest.raises(ValueError):
        upsample(torch.rand(1, 1, 4, 4, 4), 0, "cubic")
