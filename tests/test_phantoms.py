"""Tests for the simulated DWI phantom (workbench.data.phantoms)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from workbench.baselines import estimate_background_sigma
from workbench.data.phantoms import (
    PHANTOM_FILES,
    Phantom,
    gradient_scheme,
    simulate_dwi,
    write_phantom,
)
from workbench.io_utils import InputError

SHAPE = (32, 32, 16)


@pytest.fixture(scope="module")
def phantom() -> Phantom:
    return simulate_dwi(SHAPE, scheme="multishell", snr=10.0, seed=0)


@pytest.fixture(scope="module")
def small() -> Phantom:
    return simulate_dwi((16, 16, 8), scheme="dti", snr=20.0, seed=3)


# --------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("name, n, n_b0, shells", [("multishell", 65, 5, {1000: 30, 2000: 30}), ("dti", 22, 2, {1000: 20})])
def test_gradient_scheme_sizes(name, n, n_b0, shells):
    bvals, bvecs = gradient_scheme(name, seed=0)
    assert bvals.shape == (n,) and bvecs.shape == (n, 3)
    b0 = bvals == 0
    assert b0.sum() == n_b0
    assert {int(b): int((bvals == b).sum()) for b in np.unique(bvals[~b0])} == shells
    np.testing.assert_array_equal(bvecs[b0], 0.0)
    np.testing.assert_allclose(np.linalg.norm(bvecs[~b0], axis=1), 1.0, atol=1e-12)
    # b0 first, then interleaved: no run of DW volumes longer than n / n_b0
    pos = np.flatnonzero(b0)
    assert pos[0] == 0
    assert np.diff(np.r_[pos, n]).max() <= int(np.ceil(n / n_b0))


def test_gradient_directions_well_spread():
    bvals, bvecs = gradient_scheme("multishell", seed=0)
    for b in (1000, 2000):
        v = bvecs[bvals == b]
        cos = np.abs(v @ v.T)
        np.fill_diagonal(cos, 0.0)
        min_angle = np.degrees(np.arccos(cos.max()))
        assert min_angle > 15.0, (b, min_angle)


def test_gradient_scheme_seeded():
    a = gradient_scheme("dti", seed=0)
    b = gradient_scheme("dti", seed=0)
    c = gradient_scheme("dti", seed=1)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_array_equal(a[0], c[0])
    assert not np.allclose(a[1], c[1])


def test_unknown_scheme():
    with pytest.raises(ValueError, match="multishell"):
        gradient_scheme("hardi")


# --------------------------------------------------------------------------- simulation
def test_simulate_seeded_exact_and_seed_dependent(small):
    again = simulate_dwi((16, 16, 8), scheme="dti", snr=20.0, seed=3)
    for name in ("noisy", "clean", "mask", "tissue", "bvals", "bvecs", "affine", "n_fibres", "fibre_dirs"):
        np.testing.assert_array_equal(getattr(small, name), getattr(again, name), err_msg=name)
    other = simulate_dwi((16, 16, 8), scheme="dti", snr=20.0, seed=4)
    assert not np.array_equal(small.tissue, other.tissue)
    assert not np.allclose(small.bvecs, other.bvecs)
    assert not np.array_equal(small.noisy, other.noisy)


@pytest.mark.parametrize("scheme, n", [("multishell", 65), ("dti", 22)])
def test_shapes_and_dtypes(scheme, n):
    p = simulate_dwi((12, 14, 8), scheme=scheme, snr=15.0, seed=0)
    assert p.noisy.shape == p.clean.shape == (12, 14, 8, n)
    assert p.noisy.dtype == p.clean.dtype == np.float32
    assert p.mask.shape == p.tissue.shape == (12, 14, 8)
    assert p.mask.dtype == bool and p.tissue.dtype == np.uint8
    assert p.bvals.shape == (n,) and p.bvecs.shape == (n, 3)
    assert p.affine.shape == (4, 4)
    np.testing.assert_allclose(np.diag(p.affine)[:3], 2.0)
    centre = p.affine @ np.r_[(np.array((12, 14, 8)) - 1) / 2, 1.0]
    np.testing.assert_allclose(centre[:3], 0.0, atol=1e-12)
    assert p.snr == 15.0
    assert p.sigma == pytest.approx(650.0 / 15.0)


def test_bad_arguments():
    with pytest.raises(ValueError):
        simulate_dwi((8, 8), scheme="dti")
    with pytest.raises(ValueError):
        simulate_dwi((8, 8, 8), scheme="dti", snr=0)


def test_clean_signal_and_tissues(phantom):
    p = phantom
    assert (p.clean >= 0).all()
    np.testing.assert_array_equal(p.mask, p.tissue > 0)
    assert (p.clean[~p.mask] == 0).all()
    assert set(np.unique(p.tissue)) == {0, 1, 2, 3}
    b0 = p.bvals == 0
    s0 = p.clean[..., b0].mean(-1)
    # T2-weighted b0 contrast: CSF > GM > WM
    means = [s0[p.tissue == k].mean() for k in (1, 2, 3)]
    assert means[0] > means[1] > means[2] > 0
    # b0 volumes are identical copies of S0 in the clean data
    np.testing.assert_allclose(p.clean[..., b0], np.broadcast_to(s0[..., None], p.clean[..., b0].shape), rtol=1e-6)
    # signal decays with b
    dw1, dw2 = p.clean[..., p.bvals == 1000], p.clean[..., p.bvals == 2000]
    assert (dw1[p.mask].mean() < s0[p.mask].mean()) and (dw2[p.mask].mean() < dw1[p.mask].mean())


def test_fa_white_vs_grey_matter(phantom):
    from dipy.core.gradients import gradient_table
    from dipy.reconst.dti import TensorModel

    p = phantom
    gtab = gradient_table(p.bvals, bvecs=p.bvecs)
    fa = TensorModel(gtab).fit(p.clean, mask=p.mask).fa
    assert fa[p.tissue == 3].mean() > 0.4
    assert fa[p.tissue == 2].mean() < 0.2
    assert fa[p.tissue == 1].mean() < 0.2


def test_crossing_voxels(phantom):
    p = phantom
    cross = p.n_fibres == 2
    assert cross.sum() > 20
    assert (p.n_fibres[p.tissue == 3] >= 1).all() and (p.n_fibres[p.tissue != 3] == 0).all()
    d = p.fibre_dirs[cross].astype(float)  # (V, 2, 3)
    np.testing.assert_allclose(np.linalg.norm(d, axis=-1), 1.0, atol=1e-5)
    angle = np.degrees(np.arccos(np.abs(np.sum(d[:, 0] * d[:, 1], axis=-1))))
    assert np.median(angle) > 45.0
    # orientations curve smoothly: neighbouring single-fibre WM voxels mostly agree
    single = p.fibre_dirs[..., 0, :]
    cos = np.abs(np.sum(single[1:] * single[:-1], axis=-1))
    both = (p.n_fibres[1:] == 1) & (p.n_fibres[:-1] == 1)
    assert np.median(cos[both]) > 0.98


def test_signal_is_dipy_multi_tensor(phantom):
    from dipy.core.gradients import gradient_table
    from dipy.sims.voxel import multi_tensor

    p = phantom
    gtab = gradient_table(p.bvals, bvecs=p.bvecs)
    s0 = p.clean[..., p.bvals == 0].mean(-1)
    rng = np.random.default_rng(0)
    voxels = np.concatenate(
        [rng.permutation(np.argwhere(p.n_fibres == k))[:5] for k in (1, 2)]
    )
    for i, j, k in voxels:
        nf = int(p.n_fibres[i, j, k])
        dirs = p.fibre_dirs[i, j, k, :nf].astype(float)
        errs = []
        for l1, l2 in ((1.7e-3, 0.3e-3), (1.5e-3, 0.4e-3)):
            sig, _ = multi_tensor(
                gtab, np.array([[l1, l2, l2]] * nf), S0=float(s0[i, j, k]), angles=dirs,
                fractions=[100.0 / nf] * nf, snr=None,
            )
            errs.append(np.abs(sig - p.clean[i, j, k]).max())
        assert min(errs) < 1e-3 * s0[i, j, k], (nf, errs)


def test_noise_matches_sigma(phantom):
    p = phantom
    est = estimate_background_sigma(p.noisy, p.mask)
    assert est is not None
    assert abs(est - p.sigma) / p.sigma < 0.03
    # Rician in air: noisy > 0, background mean = sigma * sqrt(pi / 2)
    bg = ~p.mask
    assert (p.noisy[bg] > 0).all()
    assert p.noisy[bg].mean() == pytest.approx(p.sigma * np.sqrt(np.pi / 2), rel=0.03)


# --------------------------------------------------------------------------- writing
def test_write_phantom_roundtrip(small, tmp_path):
    from dipy.io import read_bvals_bvecs

    out = tmp_path / "ph"
    paths = write_phantom(small, out)
    assert set(paths) == set(PHANTOM_FILES)
    assert all(p.exists() and p.parent == out for p in paths.values())
    assert sorted(f.name for f in out.iterdir()) == sorted(PHANTOM_FILES.values())  # no temp files left

    dwi = nib.load(paths["dwi"])
    np.testing.assert_allclose(dwi.affine, small.affine)
    assert dwi.get_data_dtype() == np.float32
    np.testing.assert_array_equal(np.asanyarray(dwi.dataobj), small.noisy)
    np.testing.assert_array_equal(np.asanyarray(nib.load(paths["clean"]).dataobj), small.clean)
    mask = nib.load(paths["mask"])
    assert mask.get_data_dtype() == np.uint8
    np.testing.assert_array_equal(np.asanyarray(mask.dataobj).astype(bool), small.mask)
    np.testing.assert_array_equal(np.asanyarray(nib.load(paths["tissue"]).dataobj), small.tissue)
    np.testing.assert_allclose(nib.load(paths["tissue"]).affine, small.affine)

    bvals, bvecs = read_bvals_bvecs(str(paths["bval"]), str(paths["bvec"]))
    np.testing.assert_array_equal(bvals, small.bvals)
    np.testing.assert_allclose(bvecs, small.bvecs, atol=1e-9)
    # FSL layout: one row of bvals, 3 rows x N columns of bvecs
    assert len(paths["bval"].read_text().strip().splitlines()) == 1
    rows = paths["bvec"].read_text().strip().splitlines()
    assert len(rows) == 3 and all(len(r.split()) == small.bvals.size for r in rows)


def test_write_phantom_refuses_to_overwrite(small, tmp_path):
    out = tmp_path / "ph"
    paths = write_phantom(small, out)
    before = {k: p.read_bytes() for k, p in paths.items()}
    with pytest.raises(InputError, match="already exists") as err:
        write_phantom(small, out)
    assert "another folder" in str(err.value)
    assert {k: p.read_bytes() for k, p in paths.items()} == before

    # a single clashing file blocks everything before anything is written
    other = tmp_path / "partial"
    other.mkdir()
    (other / "dwi.bvec").write_text("keep me\n")
    with pytest.raises(InputError, match="dwi.bvec"):
        write_phantom(small, other)
    assert [f.name for f in other.iterdir()] == ["dwi.bvec"]
    assert (other / "dwi.bvec").read_text() == "keep me\n"
