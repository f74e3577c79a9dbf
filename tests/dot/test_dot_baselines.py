"""DOT baselines (workbench.tasks.dot.baselines): Rytov data/Jacobian, GCV Tikhonov, Gauss-Newton.

All on ``default_geometry(16)`` (4 mm voxels, 2184 body voxels, 256 pairs).  What linear DOT
can do at this grid: a 8 mm absorber (~36 voxels) comes back blurred, at ~3/4 of its
contrast in the mean, with its peak inside it; cross-talk into mu_s' stays small.
"""

from __future__ import annotations

import numpy as np
import pytest

from workbench.tasks.dot import baselines as B
from workbench.tasks.dot.physics import ForwardModel, default_geometry, homogeneous, simulate_measurements

G = default_geometry(16)
BODY = G.body_mask
N = int(BODY.sum())
MU0 = np.asarray(G.background)
CENTRE = np.array([12.0, 6.0, 4.0])     # mm, off centre (the body is a 56 mm cylinder)
RADIUS = 8.0


@pytest.fixture(autouse=True)
def _one_blas_thread():
    with B.serial_blas():
        yield


def phantom(mua_factor=1.0, mus_factor=1.0):
    xyz = G.coordinates()
    inc = (((xyz - CENTRE[:, None, None, None]) ** 2).sum(0) <= RADIUS ** 2) & BODY
    mu = homogeneous(G)
    mu[0][inc] *= mua_factor
    mu[1][inc] *= mus_factor
    return mu, inc


@pytest.fixture(scope="module")
def absorber():
    mu, inc = phantom(mua_factor=2.0)
    with B.serial_blas():
        return mu, inc, simulate_measurements(G, mu)


def relative(mu):
    return mu / MU0[:, None, None, None] - 1.0


def rmse_mua(mu, truth):
    return float(np.sqrt(((mu[0] - truth[0])[BODY] ** 2).mean()))


# ----------------------------------------------------------------------------- data convention
def test_rytov_data_convention():
    ref = np.full((2, 2, 3), 2.0 + 0j)
    data = ref * np.exp(np.array([0.1, -0.2])[:, None, None])
    data[1] *= np.exp(0.3j)
    data[1, 0, 0] = complex(-2.0, -0.0)               # phase exactly pi comes out +pi
    y = B.rytov_data(data, ref)
    assert y.shape == (3, 2, 3) and y.dtype == np.float64
    assert np.allclose(y[0], 0.1) and np.allclose(y[1].ravel()[1:], -0.2) and np.allclose(y[2].ravel()[1:], 0.3)
    assert y[2, 0, 0] == pytest.approx(np.pi)
    with pytest.raises(ValueError, match="shape|S, D"):
        B.rytov_data(data[:, :1], ref)
    with pytest.raises(ValueError, match="nonzero"):
        B.rytov_data(0 * data, ref)


def test_rytov_jacobian_finite_differences():
    """Columns of the cached background Jacobian against central differences of rytov_data, per row block."""
    A = B.rytov_jacobian(G)
    P = G.n_pairs
    assert A.shape == (3 * P, 2 * N) and not A.flags.writeable
    assert B.rytov_jacobian(G) is A                       # cached per geometry
    fm = ForwardModel(G, *homogeneous(G))
    voxels = np.argwhere(BODY)
    rng = np.random.default_rng(3)
    for v in [int(fm.src[5])] + [int(k) for k in rng.integers(0, N, 3)]:
        for c in (0, 1):
            out = []
            for sign in (1.0, -1.0):
                mu = homogeneous(G)
                mu[(c,) + tuple(voxels[v])] *= 1.0 + sign * 1e-4
                out.append(ForwardModel(G, mu[0], mu[1]).measurements())
            fd = B.rytov_data(out[0], out[1]).reshape(3, P) / 2e-4
            col = A[:, c * N + v].reshape(3, P)
            for block in range(3):                    # CW log-amp, FD log-amp, FD phase
                err = np.linalg.norm(fd[block] - col[block]) / np.linalg.norm(col[block])
                assert err < 0.02, (v, c, block, err)


def test_rytov_jacobian_at_mu_scales_by_background():
    """Linearised at a heterogeneous mu, a column is d data / d(delta mu / mu0), not / mu."""
    mu, _ = phantom(mua_factor=2.0, mus_factor=1.5)
    A = B.rytov_jacobian(G, mu)
    v = int(np.flatnonzero(phantom()[1][BODY])[0])      # a voxel inside the inclusion
    idx = tuple(np.argwhere(BODY)[v])
    for c in (0, 1):
        out = []
        for sign in (1.0, -1.0):
            p = mu.copy()
            p[(c,) + idx] += sign * 1e-4 * MU0[c]
            out.append(ForwardModel(G, p[0], p[1]).measurements())
        fd = B.rytov_data(out[0], out[1]).ravel() / 2e-4
        assert np.linalg.norm(fd - A[:, c * N + v]) < 0.02 * np.linalg.norm(fd)


# ----------------------------------------------------------------------------- Tikhonov
def test_tikhonov_recovers_an_absorber(absorber):
    truth, inc, data = absorber
    mu, info = B.tikhonov(G, data)
    assert mu.shape == (2,) + G.shape and np.all(np.isfinite(mu))
    assert np.all(mu[:, ~BODY] == MU0[:, None])
    assert mu[0].min() >= B.MUA_MIN and mu[1].min() >= B.MUS_MIN
    # GCV without ground truth: a finite lam strictly inside its grid
    lams, values = info["gcv"]
    assert np.isfinite(info["lam"]) and lams[0] < info["lam"] < lams[-1] and not info["lam_at_edge"]
    assert np.all(np.isfinite(values)) and info["lam"] == lams[np.argmin(values)]
    assert info["residual"] >= 0 and info["n_rows"] == 3 * G.n_pairs
    # the peak of the mu_a change lies inside the inclusion or next to it (<= 1.5 voxels out)
    x = relative(mu)
    peak = np.unravel_index(np.argmax(np.where(BODY, x[0], -np.inf)), G.shape)
    dist = np.linalg.norm(G.coordinates()[(slice(None),) + peak] - CENTRE)
    assert dist <= RADIUS + 1.5 * G.voxel_mm, dist
    assert x[0][peak] > 0.5
    mean_a, mean_s = x[0][inc].mean(), x[1][inc].mean()
    assert 0.3 < mean_a < 1.5                     # truth 1.0; measured 0.76
    assert abs(mean_s) < 0.5 * mean_a             # cross-talk smaller (measured 0.05)
    assert rmse_mua(mu, truth) < 0.8 * rmse_mua(homogeneous(G), truth)
    # a given lam is used as is; the reference defines zero change
    mu2, info2 = B.tikhonov(G, data, lam=info["lam"])
    assert "gcv" not in info2 and np.allclose(mu2, mu)
    mu3, _ = B.tikhonov(G, data, reference=data)
    assert np.allclose(mu3, homogeneous(G))


def test_tikhonov_scattering_inclusion_has_the_right_sign():
    mu, inc = phantom(mus_factor=0.7)
    data = simulate_measurements(G, mu)
    rec, info = B.tikhonov(G, data)
    x = relative(rec)
    assert x[1][inc].mean() < -0.05                # truth -0.3; measured -0.25
    assert abs(x[0][inc].mean()) < abs(x[1][inc].mean())


def test_mask_drops_rows(absorber):
    _, inc, data = absorber
    rng = np.random.default_rng(0)
    mask = np.zeros(G.n_pairs, bool)
    mask[rng.permutation(G.n_pairs)[: G.n_pairs // 2]] = True
    mask = mask.reshape(len(G.sources_mm), len(G.detectors_mm))
    mu, info = B.tikhonov(G, data, mask=mask)
    assert info["n_rows"] == 3 * int(mask.sum()) and np.all(np.isfinite(mu))
    assert relative(mu)[0][inc].mean() > 0.1
    spoiled = data.copy()
    spoiled[:, ~mask] *= 10.0 * np.exp(1j)        # unmeasured pairs carry garbage: ignored
    assert np.array_equal(B.tikhonov(G, spoiled, mask=mask)[0], mu)
    spoiled[:, ~mask] = 0.0                        # ... or nothing at all (absent = 0, NaN)
    spoiled[0, ~mask] = np.nan
    assert np.array_equal(B.tikhonov(G, spoiled, mask=mask)[0], mu)
    gn, info = B.gauss_newton(G, spoiled, mask=mask, iterations=1)
    assert np.all(np.isfinite(gn)) and info["misfit"][1] < info["misfit"][0]
    with pytest.raises(ValueError, match="mask selects no source-detector pair"):
        B.tikhonov(G, data, mask=np.zeros_like(mask))
    with pytest.raises(ValueError, match="mask selects no source-detector pair"):
        B.gauss_newton(G, data, mask=np.zeros_like(mask))
    with pytest.raises(ValueError, match="boolean"):
        B.tikhonov(G, data, mask=mask[:3])
    with pytest.raises(ValueError, match="shape"):
        B.tikhonov(G, data[:, :3])


# ----------------------------------------------------------------------------- Gauss-Newton
def test_gauss_newton_lowers_the_misfit_and_the_error(absorber):
    truth, inc, data = absorber
    mu_t, _ = B.tikhonov(G, data)
    mu, info = B.gauss_newton(G, data, iterations=3)
    misfit = np.asarray(info["misfit"])
    assert len(misfit) == 4 and all(info["accepted"]) and info["stopped"] is None
    assert np.all(np.diff(misfit) < 0), misfit
    assert misfit[-1] < 0.1 * misfit[1]          # re-linearising gains over the linear step
    assert info["lam"][1] == pytest.approx(info["lam"][0] / 3)
    assert rmse_mua(mu, truth) <= rmse_mua(mu_t, truth)
    assert relative(mu)[0][inc].mean() > 0.3


def test_network_tikhonov_operator_is_the_fixed_lambda_tikhonov(absorber):
    """The network's linear input channels reproduce the baseline at a fixed lambda, pooled to the lift grid."""
    import torch
    import torch.nn.functional as F

    from workbench.tasks.dot.training import features, reference_data, tikhonov_operator

    _, _, data = absorber
    scales = [0.05, 0.07, 0.02]
    lams = [1e-4, 1e-2]
    x = features(data, reference_data(G), scales)[:, :3]                     # (P, 3) normalised features
    full = tikhonov_operator(G, G.grid, scales, lams, sigma_amp=0.01, sigma_phase_deg=0.5).numpy()
    rec = np.einsum("pf,fpcxyz->cxyz", x, full)
    _, gcv = B.tikhonov(G, data)
    s_max2 = gcv["lam"] / gcv["lam_relative"]     # tikhonov's lam is absolute, the operator's relative to this
    for k, lam in enumerate(lams):
        mu, _ = B.tikhonov(G, data, lam=lam * s_max2)
        want = relative(mu)
        for c in range(2):
            np.testing.assert_allclose(rec[2 * k + c][BODY], want[c][BODY], atol=2e-4 * np.abs(want[c]).max() + 1e-7)
            assert np.all(rec[2 * k + c][~BODY] == 0)
    assert np.abs(rec[0][BODY]).max() > 1.5 * np.abs(rec[2][BODY]).max()   # smaller lambda: larger deviations
    half = tikhonov_operator(G, G.grid // 2, scales, lams, sigma_amp=0.01, sigma_phase_deg=0.5).numpy()
    pooled = np.einsum("pf,fpcxyz->cxyz", x, half)
    body = torch.from_numpy(BODY.astype(np.float64))[None, None]
    num = F.avg_pool3d(torch.from_numpy(rec)[None] * body, 2)[0].numpy()
    den = F.avg_pool3d(body, 2)[0, 0].numpy()
    np.testing.assert_allclose(pooled, np.where(den > 0, num / np.maximum(den, 1e-12), 0.0), rtol=1e-4, atol=1e-7)
