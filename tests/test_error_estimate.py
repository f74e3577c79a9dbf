"""The no-reference error estimate carried through the Rician inversion (workbench.error_estimate)."""

from __future__ import annotations

import numpy as np
import pytest

from workbench.error_estimate import (FLOOR_SNR, estimate_output_error, floor_fraction, per_shell,
                                      propagate_risk)
from workbench.rician import invert_rician_mean, rician_mean


def _field(rng, lo, hi, shape=(20, 20, 10)):
    return rng.uniform(lo, hi, size=shape)


@pytest.mark.parametrize("snr_lo, snr_hi", [(1.0, 2.5), (3.0, 20.0)])
def test_propagated_risk_matches_monte_carlo_error_after_inversion(snr_lo, snr_hi):
    """A magnitude-mean estimate with Gaussian error of known variance: the error of the inverted output
    against the clean signal is what the quadrature predicts (and far above the risk near the floor)."""
    rng = np.random.default_rng(0)
    sigma = 1.0
    clean = _field(rng, snr_lo, snr_hi)
    mu = rician_mean(clean, sigma)
    mask = np.ones(clean.shape, bool)
    risk = 0.2 ** 2
    means = (mu + 0.2 * rng.standard_normal(mu.shape))[None]
    true = np.mean((invert_rician_mean(np.maximum(means[0], 0), sigma) - clean) ** 2)
    est = propagate_risk(means, np.array([risk]), sigma, mask)[0]
    assert est == pytest.approx(true, rel=0.2)
    if snr_hi <= 2.5:  # near the floor the inversion amplifies the error: the old estimate (the risk) is far low
        assert true > 1.5 * risk and est > 1.5 * risk


def test_floor_caps_the_propagated_error():
    rng = np.random.default_rng(1)
    sigma = 1.0
    means = rician_mean(_field(rng, 0.5, 2.0), sigma)[None]
    mask = np.ones(means.shape[1:], bool)
    free = propagate_risk(means, np.array([0.1]), sigma, mask)[0]
    floored = propagate_risk(means, np.array([0.1]), sigma, mask, floor=np.full(means.shape, 1.5))[0]
    assert floored < free


def test_per_shell_groups_and_flags():
    bvals = np.array([0, 0, 1000, 1005, 1000, 2000, 1995, 2000])
    mse = np.array([4.0, 4.0, 1.0, 1.0, 1.0, 9.0, 9.0, 9.0])
    near = np.array([0, 0, 0.1, 0.1, 0.1, 0.6, 0.6, 0.6])
    rows = per_shell(mse, bvals, near)
    assert [(r["b"], r["volumes"]) for r in rows] == [(0, 2), (1002, 3), (1998, 3)]
    assert [r["rmse"] for r in rows] == pytest.approx([2.0, 1.0, 3.0])
    assert [r["flagged"] for r in rows] == [False, False, True]
    # the limit sits between the phantoms' b = 1000 shells at SNR 10 (17.5% near the floor, estimates within
    # 13%) and their b = 2000 shells at SNR 20 (23%, estimates as low as 0.44 of the truth)
    flags = [r["flagged"] for r in per_shell(mse, bvals, np.array([0, 0, .175, .175, .175, .23, .23, .23]))]
    assert flags == [False, False, True]
    # a shell whose risk is not positive cannot be trusted either
    risk = np.array([1, 1, -0.1, -0.1, 0.05, 1, 1, 1.0])
    assert [r["flagged"] for r in per_shell(mse, bvals, np.zeros(8), risk)] == [False, True, False]
    # and one whose estimate is a small fraction of sigma (a difference of much larger numbers)
    assert [r["flagged"] for r in per_shell(mse, bvals, np.zeros(8), sigma=10.0)] == [False, True, False]
    assert [r["flagged"] for r in per_shell(mse, bvals, np.zeros(8), sigma=5.0)] == [False, False, False]


def test_floor_fraction_counts_dim_voxels():
    sigma = 2.0
    signal = np.concatenate([np.full(30, 0.5 * FLOOR_SNR * sigma), np.full(70, 4 * FLOOR_SNR * sigma)])
    means = rician_mean(signal.reshape(1, 10, 10, 1), sigma)
    assert floor_fraction(means, sigma, np.ones((10, 10, 1), bool))[0] == pytest.approx(0.3)


def test_estimate_without_inversion_adds_the_rician_bias():
    rng = np.random.default_rng(2)
    sigma = 1.0
    clean = _field(rng, 0.5, 3.0)
    means = rician_mean(clean, sigma)[None]
    mask = np.ones(clean.shape, bool)
    est, rows = estimate_output_error(means, np.array([0.0]), means, sigma, mask, np.array([1000.0]),
                                      rician_correction=False, free_water_floor=False)
    assert est == pytest.approx(np.sqrt(np.mean((means[0] - clean) ** 2)), rel=0.02)
    assert len(rows) == 1 and rows[0]["b"] == 1000


def test_propagated_risk_on_a_voxel_subset_is_close_to_the_full_one():
    rng = np.random.default_rng(4)
    mask = rng.random((40, 40, 30)) < 0.7  # ~34k voxels
    means = rng.uniform(0.5, 8.0, (2, 40, 40, 30))
    full = propagate_risk(means, np.array([0.2, 0.5]), 1.0, mask)
    sub = propagate_risk(means, np.array([0.2, 0.5]), 1.0, mask, max_voxels=5000)
    assert not np.array_equal(full, sub) and np.allclose(sub, full, rtol=0.03)


def test_chunked_rician_inversion_equals_one_pass():
    m = np.random.default_rng(5).uniform(0.0, 80.0, (3, 11, 13)).astype(np.float32)
    assert np.array_equal(invert_rician_mean(m, 1.3, chunk=50), invert_rician_mean(m, 1.3))
    assert invert_rician_mean(m, 1.3).dtype == np.float32
