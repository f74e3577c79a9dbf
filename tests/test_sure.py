"""SURE combination: Monte-Carlo divergences are right, the weights approach the oracle's, the risk the truth."""

import numpy as np
import pytest
from scipy import ndimage

from workbench.sure import monte_carlo_divergence, sure_combine


@pytest.fixture
def signal():
    rng = np.random.default_rng(0)
    base = ndimage.gaussian_filter(rng.random((4, 33, 34, 35)), sigma=(0, 3, 3, 3))
    return (base - base.min()) / np.ptp(base) * 10.0


def test_divergence_of_a_linear_map_is_its_trace():
    vols = np.random.default_rng(1).random((3, 33, 34, 35)).astype(np.float32)
    mask = np.zeros(vols.shape[1:], bool)
    mask[5:25, 5:30, 5:30] = True
    div, base = monte_carlo_divergence(lambda v: 0.4 * v, vols, eps=1e-2, mask=mask)
    assert np.allclose(base, 0.4 * vols)
    assert div.shape == (3,)
    assert np.allclose(div, 0.4 * mask.sum(), rtol=0.05)  # one probe: relative spread ~ sqrt(2 / n)
    # a J-invariant map (volume j from volume j+1) does not depend on volume j: divergence ~ 0
    div0, _ = monte_carlo_divergence(lambda v: np.roll(v, 1, axis=0), vols, eps=1e-2, mask=mask)
    assert np.all(np.abs(div0) < 0.05 * mask.sum())
    # a spatial smoother: the diagonal of a 3x3x3 box filter is 1/27
    div_box, _ = monte_carlo_divergence(lambda v: ndimage.uniform_filter(v, size=(1, 3, 3, 3)), vols,
                                        eps=1e-2, mask=mask)
    assert np.allclose(div_box, mask.sum() / 27.0, rtol=0.2)
    with pytest.raises(ValueError, match="eps"):
        monte_carlo_divergence(lambda v: v, vols, eps=0.0)


def test_sure_weights_approach_the_oracle_and_the_risk_the_truth(signal):
    rng = np.random.default_rng(2)
    sigma = 1.0
    noisy = (signal + rng.normal(0, sigma, signal.shape)).astype(np.float32)
    mask = np.ones(signal.shape[1:], bool)
    mask[:3] = False  # risk estimated on part of the volume only
    # a J-invariant-like estimate: the truth plus an error independent of this noise draw (divergence 0)
    held_out = (signal + rng.normal(0, 0.6, signal.shape)).astype(np.float32)
    smoother = lambda v: ndimage.gaussian_filter(v, sigma=(0, 1.2, 1.2, 1.2))
    div, smooth = monte_carlo_divergence(smoother, noisy, eps=1e-2, mask=mask)
    combined, weights, risk = sure_combine(noisy, [held_out, smooth], [np.zeros(4), div], np.full(4, sigma**2), mask)
    assert combined.shape == noisy.shape and weights.shape == (4, 2) and risk.shape == (4,)
    mse = lambda a, j: float(np.mean((a[j][mask] - signal[j][mask]) ** 2))
    for j in range(4):
        basis = np.stack([held_out[j][mask], smooth[j][mask]], 1).astype(np.float64)
        oracle = np.linalg.lstsq(basis, signal[j][mask], rcond=None)[0]
        assert np.allclose(weights[j], oracle, atol=0.05)
        assert mse(combined, j) < min(mse(held_out, j), mse(smooth, j))
        # SURE is unbiased with a spread of ~ sigma^2 sqrt(2 / n) (0.0075 sigma^2 here): 3 of those
        assert abs(risk[j] - mse(combined, j)) < 3 * sigma**2 * np.sqrt(2 / mask.sum())
    # ignoring the smoother's divergence over-trusts it (it has seen the noise): the weight is biased up
    _, naive, _ = sure_combine(noisy, [held_out, smooth], [np.zeros(4), np.zeros(4)], np.full(4, sigma**2), mask)
    assert np.all(naive[:, 1] > weights[:, 1] + 0.05)


def test_sure_combine_rejects_bad_input(signal):
    mask = np.ones(signal.shape[1:], bool)
    with pytest.raises(ValueError, match="one divergence per estimate"):
        sure_combine(signal, [signal, signal], [np.zeros(4)], np.ones(4), mask)
    with pytest.raises(ValueError, match="mask is empty"):
        sure_combine(signal, [signal], [np.zeros(4)], np.ones(4), ~mask)
    # two identical estimates: still a defined answer, not a singular-matrix error
    out, w, _ = sure_combine(signal, [signal, signal], [np.zeros(4), np.zeros(4)], np.ones(4), mask)
    assert np.allclose(out, signal, atol=1e-3) and np.allclose(w.sum(axis=1), 1.0, atol=1e-3)


def test_convex_pair_minimises_sure_on_the_unit_interval(signal):
    from workbench.sure import sure_convex_pair

    rng = np.random.default_rng(3)
    noisy = (signal + rng.normal(0, 1.0, signal.shape)).astype(np.float32)
    mask = np.ones(signal.shape[1:], bool)
    first = (signal + rng.normal(0, 0.8, signal.shape)).astype(np.float32)  # J-invariant-like: divergence 0
    div = np.full(4, 0.3 * mask.sum())
    second = (0.3 * noisy + 0.7 * signal).astype(np.float32)  # divergence 0.3 per voxel
    mixed, t, risk = sure_convex_pair(noisy, first, second, np.zeros(4), div, np.ones(4), mask)
    assert np.allclose(mixed, (1 - t[:, None, None, None]) * first + t[:, None, None, None] * second,
                       atol=1e-4) and np.isfinite(risk).all()
    grid = np.linspace(0, 1, 201)
    for j in range(4):
        sure = [np.sum(((1 - g) * first[j] + g * second[j] - noisy[j]) ** 2) + 2 * g * div[j] for g in grid]
        assert abs(t[j] - grid[int(np.argmin(sure))]) <= 0.01
    # the optimum lies outside [0, 1] (the second is the first pushed away from the data: 3 first - 2 noisy,
    # divergence -2 per voxel): t is clipped to the interval, never extrapolated past it
    away = (3 * first - 2 * noisy).astype(np.float32)
    _, t, _ = sure_convex_pair(noisy, first, away, np.zeros(4), np.full(4, -2.0 * mask.sum()), np.ones(4), mask)
    assert np.all(t == 0.0)


def test_blend_falls_back_to_a_convex_mix_on_a_tiny_mask():
    """Fewer mask voxels than MIN_SURE_VOXELS: network and MP-PCA weights in [0, 1] summing to 1, none on noisy."""
    from workbench.data.phantoms import simulate_dwi
    from workbench.inference import MIN_SURE_VOXELS, blend_with_mppca, rician_noise_stats

    p = simulate_dwi(shape=(20, 20, 10), scheme="dti", snr=15.0, seed=5)
    noisy = np.moveaxis(p.noisy, -1, 0).astype(np.float32)
    clean = np.moveaxis(p.clean, -1, 0)
    pred = (clean + np.random.default_rng(0).normal(0, p.sigma, clean.shape)).astype(np.float32)
    tiny = np.zeros(p.mask.shape, bool)
    tiny[8:14, 8:14, 3:7] = True
    assert tiny.sum() < MIN_SURE_VOXELS and (tiny <= p.mask).all()
    var, _ = rician_noise_stats(pred, tiny, p.sigma)
    out, weights, risk = blend_with_mppca(pred, noisy, var, tiny, p.sigma, p.bvals)
    assert np.all(weights[:, 2] == 0) and np.allclose(weights[:, :2].sum(axis=1), 1.0)
    assert np.all((weights[:, :2] >= 0) & (weights[:, :2] <= 1)) and np.isfinite(risk).all()
    # with the whole brain mask the three free weights are used
    var, _ = rician_noise_stats(pred, p.mask, p.sigma)
    _, weights, _ = blend_with_mppca(pred, noisy, var, p.mask, p.sigma, p.bvals)
    assert p.mask.sum() >= MIN_SURE_VOXELS and np.any(weights[:, 2] != 0)


def test_blend_in_place_equals_a_new_array():
    """``overwrite=True`` writes the blend into the predictions volume by volume: same numbers as a new array,
    including a volume that falls back to the convex mix (which reads the predictions it overwrites)."""
    from workbench.data.phantoms import simulate_dwi
    from workbench.inference import blend_with_mppca, mppca_with_divergence, rician_noise_stats

    p = simulate_dwi(shape=(20, 20, 10), scheme="dti", snr=15.0, seed=5)
    noisy = np.moveaxis(p.noisy, -1, 0).astype(np.float32)
    clean = np.moveaxis(p.clean, -1, 0)
    pred = (clean + np.random.default_rng(0).normal(0, p.sigma, clean.shape)).astype(np.float32)
    pred[1] = 5.0 * noisy[1]  # a wild volume: its free weights leave the plausible range
    var, _ = rician_noise_stats(pred, p.mask, p.sigma)
    mp = mppca_with_divergence(noisy, p.sigma, p.mask)
    new, w_new, r_new = blend_with_mppca(pred, noisy, var, p.mask, p.sigma, mppca=mp)
    assert w_new[1, 2] == 0.0 and np.isclose(w_new[1, :2].sum(), 1.0)  # the fallback was taken
    original = pred.copy()
    same, w_same, r_same = blend_with_mppca(pred, noisy, var, p.mask, p.sigma, mppca=mp, overwrite=True)
    assert same is pred and not np.array_equal(pred, original)
    assert np.array_equal(same, new) and np.array_equal(w_same, w_new) and np.array_equal(r_same, r_new)


def test_mppca_blend_reads_a_volumes_last_series_in_place_with_the_same_result():
    """The DWI subject's volumes are an (N, X, Y, Z) view of an (X, Y, Z, N) array, which MP-PCA reads without a
    copy; the result equals the one from a C-ordered (N, X, Y, Z) copy, for every patch-centre lattice."""
    from workbench.data.phantoms import simulate_dwi
    from workbench.inference import mppca_with_divergence

    p = simulate_dwi(shape=(20, 21, 12), scheme="dti", snr=15.0, seed=5)
    series = np.ascontiguousarray(p.noisy, dtype=np.float32) / np.float32(371.5)
    view = np.moveaxis(series, -1, 0)
    copy = np.ascontiguousarray(view)
    sigma = p.sigma / 371.5
    for lattice in (1, 4):
        div, full = mppca_with_divergence(copy, sigma, p.mask, divergence_voxels=800, lattice=lattice)
        div_view, full_view = mppca_with_divergence(view, sigma, p.mask, divergence_voxels=800, lattice=lattice)
        assert np.array_equal(full_view, full)
        assert np.allclose(div_view, div, rtol=1e-5)
        assert not np.allclose(div, 0)
