"""Tests for workbench.metrics: PSNR/RMSE/SSIM, edge sharpness, DTI and the DWI report."""

import numpy as np
import pytest
import torch
from scipy import ndimage

from workbench import losses, metrics as M

EVALS_WM = np.array([1.7e-3, 0.3e-3, 0.2e-3])   # anisotropic, FA ~ 0.84
EVALS_GM = np.array([0.8e-3, 0.7e-3, 0.65e-3])  # nearly isotropic


def _directions(n=20):
    """Deterministic near-uniform unit vectors on a hemisphere (Fibonacci)."""
    i = np.arange(n) + 0.5
    z = i / n
    phi = np.pi * (1 + 5 ** 0.5) * i
    r = np.sqrt(1 - z ** 2)
    return np.c_[r * np.cos(phi), r * np.sin(phi), z]


def _scheme(shells=(1000,), n_dirs=20, n_b0=2):
    bvals = np.r_[np.zeros(n_b0), np.concatenate([np.full(n_dirs, b, float) for b in shells])]
    bvecs = np.r_[np.zeros((n_b0, 3)), np.concatenate([_directions(n_dirs)] * len(shells))]
    return bvals, bvecs


def _tensor_signal(bvals, bvecs, evals, S0=100.0, seed=0):
    from dipy.core.gradients import gradient_table
    from dipy.sims.voxel import single_tensor

    evecs = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))[0]
    return single_tensor(gradient_table(bvals, bvecs=bvecs), S0=S0, evals=evals, evecs=evecs, snr=None)


def _fa_md(evals):
    md = evals.mean()
    return np.sqrt(1.5 * ((evals - md) ** 2).sum() / (evals ** 2).sum()), md


def _phantom(bvals, bvecs, shape=(6, 6, 4)):
    """Left half anisotropic 'white matter', right half nearly isotropic, S0 varying along z."""
    wm = _tensor_signal(bvals, bvecs, EVALS_WM, S0=1.0, seed=1)
    gm = _tensor_signal(bvals, bvecs, EVALS_GM, S0=1.0, seed=2)
    data = np.empty(shape + (len(bvals),))
    data[: shape[0] // 2] = wm
    data[shape[0] // 2:] = gm
    s0 = 80.0 + 10.0 * np.arange(shape[2])
    return data * s0[None, None, :, None]


# --------------------------------------------------------------------------- psnr / rmse
def test_psnr_identical_is_inf_and_constant_offset_known():
    rng = np.random.default_rng(0)
    ref = rng.uniform(0, 2, size=(6, 7, 8))
    ref[0, 0, 0] = 2.0
    assert M.psnr(ref, ref) == float("inf")
    assert M.psnr(ref + 0.1, ref) == pytest.approx(10 * np.log10(2.0 ** 2 / 0.01))
    assert M.psnr(ref + 0.1, ref, data_range=1.0) == pytest.approx(20.0)
    assert M.rmse(ref + 0.1, ref) == pytest.approx(0.1)
    assert M.rmse(ref, ref) == 0.0


def test_psnr_rmse_masked_and_4d():
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 1, size=(5, 6, 7, 3))
    mask = np.zeros((5, 6, 7), bool)
    mask[1:4, 1:5, 2:6] = True
    ref[mask] = np.clip(ref[mask], 0, 0.5)
    ref[2, 2, 3, 1] = 0.5
    ref[~mask] = 100.0  # outside the mask: excluded from both the error and the data range
    pred = ref.copy()
    pred[mask] += 0.05
    pred[~mask] += 7.0
    assert M.rmse(pred, ref, mask) == pytest.approx(0.05)
    assert M.psnr(pred, ref, mask) == pytest.approx(10 * np.log10(0.25 / 0.0025))
    with pytest.raises(ValueError):
        M.psnr(pred, ref, np.zeros((5, 6, 7), bool))
    with pytest.raises(ValueError):
        M.psnr(pred, ref, np.ones((5, 6, 8), bool))


# --------------------------------------------------------------------------- ssim
def test_ssim3d_identical_one_and_decreasing_with_noise():
    rng = np.random.default_rng(2)
    ref = ndimage.gaussian_filter(rng.uniform(0, 1, size=(12, 12, 12)), 1.0)
    assert M.ssim3d(ref, ref) == pytest.approx(1.0, abs=1e-12)
    noise = rng.normal(size=ref.shape)
    values = [M.ssim3d(ref + s * noise, ref) for s in (0.01, 0.05, 0.2)]
    assert 1.0 > values[0] > values[1] > values[2]
    mask = np.zeros(ref.shape, bool)
    mask[3:9, 3:9, 3:9] = True
    assert M.ssim3d(ref, ref, mask) == pytest.approx(1.0, abs=1e-12)


def test_ssim3d_4d_is_mean_over_volumes():
    rng = np.random.default_rng(3)
    ref = rng.uniform(0, 1, size=(8, 8, 8, 2))
    pred = ref + 0.1 * rng.normal(size=ref.shape)
    dr = ref.max()
    per_volume = [M.ssim3d(pred[..., i], ref[..., i], data_range=dr) for i in range(2)]
    assert M.ssim3d(pred, ref) == pytest.approx(np.mean(per_volume))


# --------------------------------------------------------------------------- edges
def test_edge_sharpness_uses_the_loss_sobel():
    rng = np.random.default_rng(4)
    vol = rng.normal(size=(7, 6, 5))
    ref = np.sqrt(sum(ndimage.sobel(vol, axis=a, mode="nearest") ** 2 for a in range(3))) / 32
    assert M.edge_sharpness(vol) == pytest.approx(ref.mean(), rel=1e-12)
    mag = losses.sobel_magnitude_3d(torch.from_numpy(vol)).numpy()
    mask = vol > 0
    assert M.edge_sharpness(vol, mask) == pytest.approx(mag[mask].mean(), rel=1e-12)
    # ramp of slope 2 along z: 2 inside; constant: 0; 4D: mean over volumes
    ramp = np.broadcast_to(2.0 * np.arange(9.0), (7, 8, 9))
    inner = np.zeros(ramp.shape, bool)
    inner[1:-1, 1:-1, 1:-1] = True
    assert M.edge_sharpness(ramp, inner) == pytest.approx(2.0)
    assert M.edge_sharpness(np.full((5, 5, 5), 3.0)) == 0.0
    assert M.edge_sharpness(np.stack([ramp, np.zeros_like(ramp)], -1), inner) == pytest.approx(1.0)


# --------------------------------------------------------------------------- DTI
def test_dti_metrics_recovers_single_tensor():
    bvals, bvecs = _scheme()
    data = np.broadcast_to(_tensor_signal(bvals, bvecs, EVALS_WM), (3, 3, 2, len(bvals))).copy()
    fa, md = M.dti_metrics(data, bvals, bvecs, np.ones((3, 3, 2), bool))
    fa_true, md_true = _fa_md(EVALS_WM)
    assert np.abs(fa - fa_true).max() < 1e-3
    assert np.abs(md * 1e3 - md_true * 1e3).max() < 1e-3  # MD within 1e-3 in 1e-3 mm^2/s units
    assert fa.shape == md.shape == (3, 3, 2)


def test_dti_metrics_ignores_b2000_and_falls_back_to_all():
    bvals, bvecs = _scheme(shells=(1000, 2000))
    signal = _tensor_signal(bvals, bvecs, EVALS_WM)
    signal[bvals == 2000] *= 1.5  # non-tensor (kurtosis-like) behaviour at high b must not matter
    data = np.broadcast_to(signal, (2, 2, 2, len(bvals))).copy()
    mask = np.ones((2, 2, 2), bool)
    mask[0, 0, 0] = False
    fa, md = M.dti_metrics(data, bvals, bvecs.T, mask)  # (3, N) bvecs accepted
    fa_true, md_true = _fa_md(EVALS_WM)
    assert np.abs(fa[mask] - fa_true).max() < 1e-3
    assert np.abs(md[mask] - md_true).max() < 1e-6
    assert fa[0, 0, 0] == 0.0 and md[0, 0, 0] == 0.0  # outside the mask
    # only b = 0 and 2000: no shell <= 1500, so every volume is used
    b2, v2 = _scheme(shells=(2000,))
    data2 = np.broadcast_to(_tensor_signal(b2, v2, EVALS_GM), (2, 2, 1, len(b2))).copy()
    fa2, md2 = M.dti_metrics(data2, b2, v2, None)
    fa_true2, md_true2 = _fa_md(EVALS_GM)
    assert np.abs(fa2 - fa_true2).max() < 1e-3 and np.abs(md2 - md_true2).max() < 1e-6


# --------------------------------------------------------------------------- evaluate_dwi
KEYS = {"psnr_dwi", "ssim_dwi", "rmse_dwi", "psnr_all", "ssim_all", "rmse_all",
        "fa_rmse", "fa_rmse_wm", "md_rmse", "edge_sharpness_ratio"}


def test_evaluate_dwi_identical_gives_zero_errors():
    bvals, bvecs = _scheme()
    ref = _phantom(bvals, bvecs)
    mask = np.ones(ref.shape[:3], bool)
    mask[0, 0, 0] = False
    out = M.evaluate_dwi(ref.copy(), ref, bvals, bvecs, mask)
    assert set(out) == KEYS and all(isinstance(v, float) for v in out.values())
    assert out["psnr_dwi"] == out["psnr_all"] == float("inf")
    assert out["ssim_dwi"] == pytest.approx(1.0) and out["ssim_all"] == pytest.approx(1.0)
    for k in ("rmse_dwi", "rmse_all", "fa_rmse", "fa_rmse_wm", "md_rmse"):
        assert out[k] == pytest.approx(0.0, abs=1e-12), k
    assert out["edge_sharpness_ratio"] == pytest.approx(1.0)


def test_evaluate_dwi_noisy_and_blurred_prediction():
    bvals, bvecs = _scheme()
    ref = _phantom(bvals, bvecs)
    rng = np.random.default_rng(5)
    noisy = ref + rng.normal(scale=2.0, size=ref.shape)
    out = M.evaluate_dwi(noisy, ref, bvals, bvecs)
    assert np.isfinite(out["psnr_dwi"]) and out["ssim_dwi"] < 1
    assert out["fa_rmse"] > 0 and out["fa_rmse_wm"] > 0 and out["md_rmse"] > 0
    dwi = bvals > 50
    assert out["rmse_dwi"] == pytest.approx(M.rmse(noisy[..., dwi], ref[..., dwi]))
    # dwi data range is the max of the dwi volumes, not of the b0s
    dr = ref[..., dwi].max()
    assert out["psnr_dwi"] == pytest.approx(M.psnr(noisy[..., dwi], ref[..., dwi], data_range=dr))
    assert dr < ref.max()
    assert out["edge_sharpness_ratio"] > 1  # noise adds gradient energy
    blurred = ndimage.uniform_filter(ref, size=(3, 3, 3, 1), mode="nearest")
    assert M.evaluate_dwi(blurred, ref, bvals, bvecs)["edge_sharpness_ratio"] < 1
