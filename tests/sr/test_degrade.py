"""Seeded HR -> LR degradation and the LR/HR grid affines."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.io_utils import InputError
from workbench.tasks.sr import degrade as dg


def _hr(shape=(32, 32, 32), seed=0):
    return np.random.default_rng(seed).random(shape).astype(np.float32)


def _affine():
    """An oblique, anisotropic HR affine."""
    c, s = np.cos(0.3), np.sin(0.3)
    aff = np.eye(4)
    aff[:3, :3] = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]) @ np.diag([0.7, 0.8, 2.5])
    aff[:3, 3] = [-120.0, 40.5, 13.0]
    return aff


def test_params_are_seeded_and_in_range():
    p = dg.sample_degrade_params(np.random.default_rng(3), (4, 4, 1))
    assert p == dg.sample_degrade_params(np.random.default_rng(3), (4, 4, 1))
    assert p.scale == (4, 4, 1) and p.psf_fwhm[2] == 0.0
    assert all(0.8 <= f <= 1.2 for f in p.psf_fwhm[:2]) and 0.005 <= p.noise_std <= 0.02
    assert dg.sample_degrade_params(np.random.default_rng(0), 2).scale == (2, 2, 2)


def test_degrade_is_deterministic_per_seed_and_crops_to_a_multiple():
    hr = _hr((34, 33, 32))
    p = dg.sample_degrade_params(np.random.default_rng(1), 4)
    a, b = dg.degrade(hr, p, seed=5), dg.degrade(hr, p, seed=5)
    assert a.dtype == np.float32 and a.shape == (8, 8, 8) and np.array_equal(a, b)
    assert not np.array_equal(a, dg.degrade(hr, p, seed=6))
    assert dg.degrade(hr, dg.DegradeParams((4, 4, 1), (1.0, 1.0, 0.0), 0.01)).shape == (8, 8, 32)


def test_degrade_without_blur_or_noise_is_the_block_mean():
    hr = _hr((8, 6, 4))
    lr = dg.degrade(hr, dg.DegradeParams((2, 3, 1), (0.0, 0.0, 0.0), 0.0))
    np.testing.assert_allclose(lr, hr.reshape(4, 2, 2, 3, 4, 1).mean(axis=(1, 3, 5)), atol=1e-6)


def test_noise_has_the_requested_std():
    hr = np.full((64, 64, 64), 0.5, np.float32)
    lr = dg.degrade(hr, dg.DegradeParams((2, 2, 2), (1.0, 1.0, 1.0), 0.02), seed=0)
    assert abs(lr.mean() - 0.5) < 1e-3 and abs(lr.std() - 0.02) < 1e-3


def test_blur_lowers_high_frequency_energy():
    hr = _hr((32, 32, 32))
    sharp = dg.degrade(hr, dg.DegradeParams((2, 2, 2), (0.0, 0.0, 0.0), 0.0))
    blurred = dg.degrade(hr, dg.DegradeParams((2, 2, 2), (1.2, 1.2, 1.2), 0.0))

    def hf(v):  # energy of the finite differences
        return sum(float((np.diff(v, axis=a) ** 2).mean()) for a in range(3))

    assert hf(blurred) < 0.5 * hf(sharp)


@pytest.mark.parametrize("s", [(2, 2, 2), (4, 4, 1), (3, 2, 5)])
def test_affine_round_trip_and_voxel_centres(s):
    hr_aff = _affine()
    lr_aff = dg.lr_affine(hr_aff, s)
    np.testing.assert_allclose(dg.hr_affine(lr_aff, s), hr_aff, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(lr_aff[:3, :3], axis=0), [0.7 * s[0], 0.8 * s[1], 2.5 * s[2]])
    for i, j, k in [(0, 0, 0), (1, 2, 3), (5, 0, 2)]:  # LR centre == mean of its HR block's centres
        block = np.stack(np.meshgrid(*[np.arange(c * f, c * f + f) for c, f in zip((i, j, k), s)],
                                     indexing="ij"), -1).reshape(-1, 3)
        hr_world = (hr_aff[:3, :3] @ block.T).T + hr_aff[:3, 3]
        np.testing.assert_allclose(lr_aff[:3, :3] @ [i, j, k] + lr_aff[:3, 3], hr_world.mean(0), atol=1e-9)


def test_check_grids_accepts_the_degrade_output():
    hr, aff = _hr((34, 32, 30)), _affine()
    lr = dg.degrade(hr, dg.sample_degrade_params(np.random.default_rng(0), (4, 4, 1)))
    dg.check_grids(lr.shape, dg.lr_affine(aff, (4, 4, 1)), hr.shape, aff, (4, 4, 1))  # HR 2 voxels longer: ok
    dg.check_grids((8, 8, 30), dg.lr_affine(aff, (4, 4, 1)), (32, 32, 30), aff, (4, 4, 1))


def test_check_grids_rejects_mismatches_with_one_line_fixes():
    aff = _affine()
    lr_aff = dg.lr_affine(aff, 4)
    with pytest.raises(InputError, match=r"LR grid \(16, 16, 16\) does not match HR \(64, 64, 60\) at scale 4"):
        dg.check_grids((16, 16, 16), lr_aff, (64, 64, 60), aff, 4)
    with pytest.raises(InputError, match=r"crop the HR to \(64, 64, 64\)"):
        dg.check_grids((16, 16, 16), lr_aff, (64, 64, 68), aff, 4)
    with pytest.raises(InputError, match="voxel size"):  # LR made at scale 2
        dg.check_grids((8, 8, 8), dg.lr_affine(aff, 2), (32, 32, 32), aff, 4)
    shifted = lr_aff.copy()
    shifted[:3, 3] += aff[:3, :3] @ [0.5, 0.0, 0.0]  # half an HR voxel: e.g. the corner convention
    with pytest.raises(InputError, match="origin"):
        dg.check_grids((8, 8, 8), shifted, (32, 32, 32), aff, 4)
    flipped = lr_aff.copy()
    flipped[:3, 0] *= -1
    with pytest.raises(InputError, match="direction"):
        dg.check_grids((8, 8, 8), flipped, (32, 32, 32), aff, 4)
    with pytest.raises(InputError) as info:
        dg.check_grids((8, 8, 8), dg.lr_affine(aff, 2), (32, 32, 32), aff, 4)
    assert "\n" not in str(info.value) and "workbench sr degrade" in str(info.value)
