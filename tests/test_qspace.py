import numpy as np
import pytest

from workbench.data.qspace import (
    fold_labels,
    qspace_priors,
    split_mppca_prior,
    regression_loo_matrix,
    sh_loo_matrix,
    sh_prior_matrix,
    shell_labels,
)


def _dirs(n, seed=0):
    v = np.random.default_rng(seed).normal(size=(n, 3))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_shell_labels_groups_by_b():
    b = np.array([0, 1000, 5, 2000, 995, 2010, 0])
    assert shell_labels(b).tolist() == [0, 1, 0, 2, 1, 2, 0]


def test_sh_loo_never_uses_the_target_and_reproduces_smooth_signals():
    dirs = _dirs(30)
    w = sh_loo_matrix(dirs, order=4, smooth=0.0)
    assert np.allclose(np.diag(w), 0.0)
    # an order-2 even function of direction (a tensor signal, linearised) is in the SH span
    signal = 1.0 + 0.5 * dirs[:, 0] ** 2 - 0.3 * dirs[:, 1] * dirs[:, 2]
    assert np.allclose(w @ signal, signal, atol=1e-6)


def test_sh_order_drops_for_few_directions():
    w = sh_loo_matrix(_dirs(4), order=4)
    assert np.allclose(w, (np.ones((4, 4)) - np.eye(4)) / 3)


def test_regression_loo_zero_diagonal_and_exact_for_collinear_volumes():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(500, 1))
    x = np.concatenate([base * k + c for k, c in [(1, 0), (2, 1), (-1, 3), (0.5, -2)]], axis=1)
    w = regression_loo_matrix(x, ridge=1e-9)
    assert np.allclose(np.diag(w[:, :4]), 0.0)
    pred = x @ w[:, :4].T + w[:, 4]
    assert np.allclose(pred, x, atol=1e-4)


def test_priors_are_j_invariant():
    """Changing volume j must not change prior j (the network input for j)."""
    rng = np.random.default_rng(2)
    bvals = np.array([0] + [1000] * 12 + [0])
    bvecs = np.concatenate([[[0, 0, 0]], _dirs(12), [[0, 0, 0]]])
    data = rng.random((6, 5, 4, 14)).astype(np.float32) + 1
    mask = np.ones((6, 5, 4), bool)
    # the SH prior is exactly linear with a fixed matrix: check it directly
    w, unfilled = sh_prior_matrix(bvals, bvecs, 4)
    assert not unfilled.any() and np.allclose(np.diag(w), 0)
    a = qspace_priors(data, bvals, bvecs, mask, "sh")
    changed = data.copy()
    changed[..., 5] *= 3
    b = qspace_priors(changed, bvals, bvecs, mask, "sh")
    assert np.allclose(a[0, ..., 5], b[0, ..., 5], atol=1e-6)
    assert not np.allclose(a[0, ..., 6], b[0, ..., 6])


@pytest.mark.parametrize("kind,count", [("none", 0), ("sh", 1), ("regression", 1), ("both", 2), ("mppca", 3)])
def test_prior_kinds_shape(kind, count):
    data = np.random.default_rng(0).random((4, 4, 3, 8)).astype(np.float32)
    bvals = np.array([0, 1000, 1000, 1000, 1000, 1000, 1000, 1000])
    out = qspace_priors(data, bvals, np.concatenate([[[0, 0, 0]], _dirs(7)]), None, kind)
    assert out.shape == (count, 4, 4, 3, 8)
    assert np.isfinite(out).all()


def test_fold_labels_alternate_within_each_shell():
    bvals = np.array([0, 1000, 1000, 0, 2000, 1000, 2000, 1000, 2000])
    labels = fold_labels(len(bvals), bvals, 2)
    for b in (0, 1000, 2000):
        sel = labels[bvals == b]
        assert abs(int((sel == 0).sum()) - int((sel == 1).sum())) <= 1
    assert fold_labels(7, None, 3).tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_split_mppca_prior_is_j_invariant_and_denoises(small_phantom):
    """Prediction j comes from MP-PCA of the other fold: changing volume j leaves it (almost) unchanged."""
    p = small_phantom
    a = split_mppca_prior(p.noisy, p.bvals, p.mask)
    j = int(np.flatnonzero(p.bvals > 50)[0])
    changed = p.noisy.copy()
    changed[..., j] = changed[..., j] + np.random.default_rng(5).normal(0, p.sigma, changed.shape[:3])
    b = split_mppca_prior(changed, p.bvals, p.mask)
    m = p.mask
    delta = (changed - p.noisy)[..., j][m]
    # the only path from y_j to prediction j is the cross-fitted regression: weights fitted on the other
    # checkerboard parity, so y_j's noise at a voxel does not reach its own prediction (without
    # cross-fitting about N / voxels of it did, here 12 / 1776)
    leak = float(((b - a)[..., j][m] * delta).sum() / (delta**2).sum())
    assert abs(leak) < 0.01
    labels = fold_labels(len(p.bvals), p.bvals)
    same, other = labels == labels[j], labels != labels[j]
    same[j] = False
    change = np.abs(a - b)[m].mean(axis=0)
    assert np.all(change[same] == 0)  # same fold: features and targets untouched
    assert change[other].mean() > change[j]  # other fold: MP-PCA of y_j feeds them (j: only the weights)
    dw = p.bvals > 50
    err = lambda x: np.sqrt(np.mean((x[..., dw][m] - p.clean[..., dw][m]) ** 2))
    assert err(a) < 0.9 * err(p.noisy)  # 10 source volumes per fold on this tiny phantom: little redundancy


def test_priors_reduce_error_on_phantom(small_phantom):
    p = small_phantom
    priors = qspace_priors(p.noisy, p.bvals, p.bvecs, p.mask, "both")
    dw = p.bvals > 50
    err = lambda a: np.sqrt(np.mean((a[..., dw][p.mask] - p.clean[..., dw][p.mask]) ** 2))
    assert err(priors[0]) < 0.8 * err(p.noisy)


def test_rician_mean_inverse_round_trip_and_monte_carlo():
    from workbench.rician import invert_rician_mean, rician_mean

    a = np.array([0.0, 0.5, 1.0, 2.0, 5.0, 30.0, 100.0])
    m = rician_mean(a, 2.0)
    assert np.allclose(invert_rician_mean(m, 2.0), a, atol=2e-3)
    rng = np.random.default_rng(0)
    samples = np.abs(3.0 + rng.normal(0, 2, 200_000) + 1j * rng.normal(0, 2, 200_000))
    assert abs(samples.mean() - rician_mean(3.0, 2.0)) < 0.02
    assert invert_rician_mean(np.array([1.0]), 2.0)[0] == 0.0  # below the Rayleigh mean


@pytest.mark.parametrize("kind", ["regression", "mppca"])
def test_fitted_priors_ignore_the_voxels_own_value(kind):
    """Cross-fitting: a huge change of volume j at one voxel leaves prior j at that voxel unchanged,
    even with few voxels per fitted weight (where a plain fit would reproduce the change)."""
    rng = np.random.default_rng(4)
    bvals = np.array([0] + [1000] * 12 + [0])
    bvecs = np.concatenate([[[0, 0, 0]], _dirs(12), [[0, 0, 0]]])
    data = (rng.random((6, 5, 4, 14)) + 1).astype(np.float32)
    mask = np.ones((6, 5, 4), bool)
    j, v = 5, (2, 3, 1)
    a = qspace_priors(data, bvals, bvecs, mask, kind)
    changed = data.copy()
    changed[v + (j,)] += 50.0
    b = qspace_priors(changed, bvals, bvecs, mask, kind)
    assert a[0][v + (j,)] == pytest.approx(b[0][v + (j,)], abs=1e-4)
    assert np.abs(a[0][..., j] - b[0][..., j]).max() > 1e-3  # the weights for the other parity did move


def test_split_mppca_prior_on_a_lattice_of_patch_centres_stays_close(small_phantom):
    """A quarter of the patch centres (body-centred cubic lattice): every brain voxel still gets a prediction,
    within a few % of the every-voxel prior's error, and the progress bar still ends full."""
    p = small_phantom
    dense = split_mppca_prior(p.noisy, p.bvals, p.mask, n_folds=2)
    calls = []
    thin = split_mppca_prior(p.noisy, p.bvals, p.mask, n_folds=2, lattice=4, progress=lambda d, t: calls.append((d, t)))
    m, dw = p.mask, p.bvals > 50
    err = lambda x: np.sqrt(np.mean((x[..., dw][m] - p.clean[..., dw][m]) ** 2))  # noqa: E731
    assert not np.array_equal(thin, dense)
    assert np.isfinite(thin).all() and (thin[m] > 0).mean() > 0.99
    assert err(thin) < 1.05 * err(dense)
    assert calls[-1][0] == calls[-1][1]


def test_split_mppca_prior_reports_progress_cancels_and_gives_the_same_result(small_phantom):
    """With progress the numbers are the same, one report per plane of MP-PCA patch centres of each fold."""
    from workbench.mppca import patch_centres
    from workbench.tasks.base import Cancelled

    p = small_phantom
    whole = split_mppca_prior(p.noisy, p.bvals, p.mask, n_folds=2)
    calls = []
    slabbed = split_mppca_prior(p.noisy, p.bvals, p.mask, n_folds=2, progress=lambda d, t: calls.append((d, t)))
    np.testing.assert_array_equal(slabbed, whole)
    per_fold = len(patch_centres(p.noisy.shape[2], min(2, (p.noisy.shape[2] - 1) // 2), 1))
    assert calls == [(k + 1, 2 * per_fold) for k in range(2 * per_fold)]
    # a mask on a few planes: fewer planes hold centres, and the bar still ends full
    few = np.zeros_like(p.mask)
    few[..., 5:7] = p.mask[..., 5:7]
    calls = []
    split_mppca_prior(p.noisy, p.bvals, few, n_folds=2, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1][0] == calls[-1][1] < 2 * per_fold and [d for d, _ in calls] == list(range(1, len(calls) + 1))
    seen = []
    with pytest.raises(Cancelled):
        split_mppca_prior(p.noisy, p.bvals, p.mask, n_folds=2, progress=lambda d, t: seen.append(d),
                          should_stop=lambda: len(seen) >= 3)
    assert len(seen) == 3


def test_priors_written_in_place_as_float16_equal_the_float32_ones(small_phantom):
    """The network's float16 priors (volumes first, the split prior written straight into its slot)
    are the float32 priors to float16 rounding."""
    from workbench.data.qspace import qspace_priors

    p = small_phantom
    data = (p.noisy / np.percentile(p.noisy[p.mask], 99.5)).astype(np.float32)
    ref = qspace_priors(data, p.bvals, p.bvecs, p.mask, "mppca", n_folds=3)
    half = qspace_priors(data, p.bvals, p.bvecs, p.mask, "mppca", n_folds=3, volumes_first=True, dtype=np.float16)
    assert half.dtype == np.float16 and half.shape == (3, data.shape[-1]) + data.shape[:3]
    np.testing.assert_allclose(np.moveaxis(half, 1, -1).astype(np.float32), ref, rtol=1e-3, atol=1e-3)
    out = np.full(data.shape, np.nan, np.float32)
    direct = split_mppca_prior(data, p.bvals, p.mask, n_folds=3, fallback=ref[1], out=out)
    assert direct is out
    # MP-PCA's own voxels exactly; outside them the regression fallback, which qspace_priors evaluates in other
    # row blocks than its written-out prior: equal to float32 rounding (bit-equal on some BLAS builds, not all)
    np.testing.assert_array_equal(out[p.mask], ref[0][p.mask])
    np.testing.assert_allclose(out, ref[0], rtol=0, atol=1e-6 * float(np.abs(ref[0]).max()))


@pytest.mark.parametrize("with_gradients", [True, False])
def test_linear_priors_on_a_region_equal_the_written_out_priors(small_phantom, with_gradients):
    """The regression and SH priors the network reads are computed per region (a 32^3 patch, a tile):
    on any region, odd offsets included (the checkerboard parity is global), they equal the priors
    written out for the whole series; without a gradient table SH falls back to regression."""
    import torch

    from workbench.data.linear_priors import parity_of
    from workbench.data.qspace import stored_and_linear_priors

    p = small_phantom
    data = (p.noisy / np.percentile(p.noisy[p.mask], 99.5)).astype(np.float32)
    bvecs = p.bvecs if with_gradients else None
    whole = qspace_priors(data, p.bvals, bvecs, p.mask, "both")  # (2, X, Y, Z, N)
    stored, linear = stored_and_linear_priors(data, p.bvals, bvecs, p.mask, "both")
    assert stored.shape[0] == 0 and linear.names == ("regression", "sh")
    volumes = torch.from_numpy(np.moveaxis(data, -1, 0).copy())
    region = (slice(3, 16), slice(1, 22), slice(5, 12))
    for j in (0, 4, data.shape[-1] - 1):
        got = linear.predict(volumes[(slice(None),) + region], j, parity_of(region, data.shape[:3]))
        np.testing.assert_allclose(got.numpy(), whole[(slice(None),) + region + (j,)], rtol=1e-5, atol=1e-6)
    assert np.array_equal(whole[0], whole[1]) != with_gradients
    # J-invariance holds for the operators themselves: no volume predicts itself
    assert float(linear.weights.diagonal(dim1=2, dim2=3).abs().max()) == 0.0


@pytest.mark.parametrize("scheme", ["dti", "multishell"])
def test_a_heavier_ridge_lowers_the_split_priors_fa(scheme):
    """Ridge shrinks the split prior's regression toward the mean: the prior's FA in white matter comes out
    lower than the truth's, more so with 1e-3 (the old fixed value) than with the default 1e-4, which is
    no further from the clean signal (closer on DTI, whose folds regress from 14-15 volumes)."""
    from workbench.config import DataConfig
    from workbench.data.phantoms import simulate_dwi
    from workbench.metrics import dti_metrics

    p = simulate_dwi(shape=(33, 34, 17), scheme=scheme, snr=20.0, seed=5)
    ref = dti_metrics(p.clean, p.bvals, p.bvecs, p.mask).fa
    wm = p.mask & (ref >= 0.25)
    assert DataConfig().prior_ridge == 1e-4
    bias, err = {}, {}
    for ridge in (1e-3, 1e-4):
        prior = split_mppca_prior(p.noisy, p.bvals, p.mask, n_folds=3, ridge=ridge)
        bias[ridge] = float(np.mean(dti_metrics(prior, p.bvals, p.bvecs, p.mask).fa[wm] - ref[wm]))
        err[ridge] = float(np.mean((prior - p.clean)[p.mask] ** 2))
    assert bias[1e-3] < bias[1e-4] - 0.002 and bias[1e-4] < 0, bias  # measured -0.049 / -0.037 (DTI)
    if scheme == "dti":  # 22 volumes, 14-15 per fold's regression: the shrinkage is most of the error
        assert err[1e-4] < 0.97 * err[1e-3], err  # measured 401 vs 427
    else:  # 65 volumes: the error barely moves (262.7 vs 262.5)
        assert err[1e-4] < 1.01 * err[1e-3], err
