"""Batched MP-PCA (workbench.mppca) against DIPY's, its windows, stride, progress and cancel; the blend's divergence."""

import numpy as np
import pytest
import torch

from workbench.data.phantoms import simulate_dwi
from workbench.mppca import mp_threshold, mppca_batched, patch_centres


@pytest.fixture(scope="module")
def odd_phantom():
    return simulate_dwi(shape=(15, 14, 13), scheme="dti", snr=10.0, seed=2)


def test_threshold_equals_dipys_classifier_on_random_spectra():
    from dipy.denoise.localpca import _pca_classifier

    rng = np.random.default_rng(0)
    for n, samples in ((22, 125), (65, 125), (30, 27)):
        spectra = np.sort(rng.gamma(1.0, 1.0, (50, n)) * rng.uniform(0.5, 3, (50, 1)), axis=1)
        spectra[:, -3:] *= 40  # a few signal components above the bulk
        var, keep = mp_threshold(torch.from_numpy(spectra), samples, n)
        for row, v, k in zip(spectra, var.numpy(), keep.numpy()):
            ref_var, _ = _pca_classifier(row, samples)
            tau = (1 + np.sqrt(n / samples)) ** 2 * ref_var
            assert v == pytest.approx(ref_var, rel=1e-12)
            np.testing.assert_array_equal(k, row >= tau)


def test_projection_on_the_kept_suffix_equals_the_full_masked_projection():
    """Patches keeping 0, a few and many components in one batch: the kmax-column product is the N-column one."""
    from workbench.mppca import _denoise_patches

    g = torch.Generator().manual_seed(0)
    n_samples, n = 125, 30
    ranks = [0, 1, 3, 8, 0, 2]
    patches = torch.randn(len(ranks), n_samples, n, generator=g) + 5.0
    for b, r in enumerate(ranks):
        if r:
            patches[b] += 6.0 * torch.randn(n_samples, r, generator=g) @ torch.randn(r, n, generator=g)
    x = patches.double() - patches.double().mean(1, keepdim=True)
    vals, vecs = torch.linalg.eigh(torch.bmm(x.transpose(1, 2), x) / n_samples)
    _, keep = mp_threshold(vals, n_samples, n)
    kept = vecs * keep[:, None, :].double()
    theta = 1.0 / (1.0 + keep.sum(-1).double())
    full = (torch.bmm(torch.bmm(x, kept), kept.transpose(1, 2)) + patches.double().mean(1, keepdim=True))
    full = full * theta[:, None, None]
    counts = keep.sum(-1)
    assert counts.min() == 0 and len(set(counts.tolist())) >= 4  # kept counts differ within the batch, 0 included
    est, th = _denoise_patches(patches.clone(), torch.float64)
    torch.testing.assert_close(th.double(), theta)
    torch.testing.assert_close(est.double(), full, rtol=1e-5, atol=1e-4)
    zero = [int(b) for b in torch.nonzero(counts == 0)[:, 0]]
    only_noise, th0 = _denoise_patches(patches[zero].clone(), torch.float64)  # kmax = 0: the patch mean
    mean = patches[zero].double().mean(1, keepdim=True).expand(-1, n_samples, -1)
    torch.testing.assert_close(only_noise.double(), mean * th0.double()[:, None, None], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("masked", [False, True])
def test_batched_mppca_equals_dipy_within_float_tolerance(odd_phantom, masked):
    from dipy.denoise.localpca import mppca as dipy_mppca
    from threadpoolctl import threadpool_limits

    p = odd_phantom
    mask = p.mask if masked else None
    with threadpool_limits(1, "blas"), np.errstate(invalid="ignore", divide="ignore"):
        ref = dipy_mppca(p.noisy.astype(np.float64), mask=mask, patch_radius=2, suppress_warning=True)
    ref = np.nan_to_num(ref)
    scale = float(p.noisy.max())
    for workers in (1, 3):  # one thread, and three each summing into a slab of their own
        ours = mppca_batched(p.noisy, mask, chunk=37, workers=workers)  # chunks that do not divide a share
        assert np.abs(ours - ref).max() < 1e-5 * scale
    assert np.abs(ours - p.noisy).mean() > 0.2 * p.sigma  # and it did denoise
    ours64 = mppca_batched(p.noisy, mask, eig_dtype=torch.float64)
    assert np.abs(ours64 - ref).max() < 1e-5 * scale


def test_a_dense_region_gets_dipys_values_while_the_rest_is_strided(odd_phantom):
    from workbench.mppca import centre_grid, dense_region

    p = simulate_dwi(shape=(27, 26, 17), scheme="dti", snr=10.0, seed=5)
    whole = mppca_batched(p.noisy, None, stride=1)
    dense = dense_region(p.mask)
    assert (~dense).sum() > 0.2 * dense.size
    mixed = mppca_batched(p.noisy, None, stride=3, dense=dense)
    np.testing.assert_allclose(mixed[p.mask], whole[p.mask], rtol=0, atol=1e-3)
    assert np.abs(mixed[~dense] - whole[~dense]).max() > 1e-2  # the air did change: fewer patches there
    grid = centre_grid(p.noisy.shape[:3], 2, 3, None, dense)
    assert grid.sum() < centre_grid(p.noisy.shape[:3], 2, 1).sum()


def test_stride_two_covers_every_voxel_and_stays_close_to_stride_one(odd_phantom):
    p = odd_phantom
    assert list(patch_centres(13, 2, 2)) == [2, 4, 6, 8, 10]
    assert list(patch_centres(14, 2, 2)) == [2, 4, 6, 8, 10, 11]  # the last centre is always there
    one = mppca_batched(p.noisy, None, stride=1)
    two = mppca_batched(p.noisy, None, stride=2)
    assert (two[p.mask] > 0).mean() > 0.99
    err = lambda x: np.sqrt(np.mean((x - p.clean)[p.mask] ** 2))  # noqa: E731
    assert err(two) < 1.1 * err(one) < 1.1 * err(p.noisy)


def test_progress_per_plane_and_cancel_between_planes(odd_phantom):
    from workbench.tasks.base import Cancelled

    p = odd_phantom
    seen = []
    mppca_batched(p.noisy, None, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(k + 1, 9) for k in range(9)]  # 13 planes, radius 2: centres at 2..10
    calls = []
    with pytest.raises(Cancelled):
        mppca_batched(p.noisy, None, progress=lambda d, t: calls.append(d), should_stop=lambda: len(calls) >= 3)
    assert calls == [1, 2, 3]


def test_a_subset_of_volumes_equals_mppca_of_their_copy(odd_phantom):
    """``channels`` denoises those volumes, read slab by slab from the whole series: the same numbers as
    MP-PCA of a copy of them (the split prior relies on it to skip that copy)."""
    p = odd_phantom
    data = np.ascontiguousarray(p.noisy, dtype=np.float32)
    pick = np.array([0, 3, 4, 7, 9, 10, 12])
    mask = p.mask
    np.testing.assert_array_equal(mppca_batched(data, mask, channels=pick),
                                  mppca_batched(np.take(data, pick, axis=-1), mask))
    with pytest.raises(ValueError, match="channels"):
        mppca_batched(data, mask, channels=np.array([0, data.shape[-1]]))


def test_bad_shapes_are_refused():
    data = np.ones((9, 9, 9, 6), np.float32)
    centres = np.zeros((9, 9, 9), bool)
    centres[1, 4, 4] = True  # its 5x5x5 patch would leave the volume
    with pytest.raises(ValueError, match="within \\(2, 2, 2\\) voxels of the edge"):
        mppca_batched(data, centres=centres)
    with pytest.raises(ValueError, match="centres shape"):
        mppca_batched(data, centres=centres[:8])
    with pytest.raises(ValueError, match="shorter than the 5-voxel patch"):
        mppca_batched(np.ones((4, 8, 8, 6), np.float32))
    with pytest.raises(ValueError, match="4D"):
        mppca_batched(np.ones((8, 8, 8), np.float32))


def test_lattices_thin_the_centres_evenly_and_every_voxel_stays_covered():
    from scipy import ndimage

    from workbench.mppca import centre_grid, dense_region, lattice_points

    shape = (27, 26, 17)
    for lattice, share in ((1, 1.0), (2, 0.5), (4, 0.25)):
        points = lattice_points(shape, lattice)
        assert abs(points.mean() - share) < 0.01
        # every voxel has a lattice point within one voxel per axis
        assert ndimage.maximum_filter(points, size=3, mode="constant").all()
    # global coordinates: a window's lattice is the volume's lattice cut at that window
    assert np.array_equal(lattice_points((5, 6, 7), 4, origin=(3, 1, 2)), lattice_points((8, 7, 9), 4)[3:, 1:, 2:])
    with pytest.raises(ValueError, match="lattice must be one of"):
        lattice_points(shape, 3)
    p = simulate_dwi(shape=shape, scheme="dti", snr=10.0, seed=5)
    dense = dense_region(p.mask)
    one = centre_grid(shape, 2, 2, None, dense, 1)
    four = centre_grid(shape, 2, 2, None, dense, 4)
    assert four.sum() < 0.45 * one.sum()
    # a lattice alone (no strided grid) in a mask touching the field of view's edge: every voxel of it is
    # still reached, by extra centres at the edge where the lattice alone would miss it
    edge = np.zeros(shape, bool)
    edge[:, 23:, 14:] = True  # voxels at y = 25, z = 16 need a centre at y = 23, z = 14: never a BCC point
    thin = centre_grid(shape, 2, None, edge, edge, 4)
    assert ndimage.maximum_filter(thin, size=5, mode="constant")[edge].all()
    assert not ndimage.maximum_filter(lattice_points(shape, 4) & edge & centre_grid(shape, 2, 1), size=5,
                                      mode="constant")[edge].all()


def test_a_lattice_of_centres_in_the_brain_stays_close_to_every_voxel(odd_phantom):
    from workbench.mppca import dense_region

    p = simulate_dwi(shape=(27, 26, 17), scheme="dti", snr=10.0, seed=5)
    dense = dense_region(p.mask)
    err = lambda x: np.sqrt(np.mean((x - p.clean)[p.mask] ** 2))  # noqa: E731
    one = mppca_batched(p.noisy, None, stride=2, dense=dense)
    seen = []
    four = mppca_batched(p.noisy, None, stride=2, dense=dense, lattice=4, progress=lambda d, t: seen.append(t))
    assert np.abs(four - one)[p.mask].max() > 1e-2  # fewer patches: not the same numbers
    assert err(four) < 1.03 * err(one) < 0.7 * err(p.noisy)
    assert np.isfinite(four).all() and (four[p.mask] > 0).mean() > 0.99
    from workbench.mppca import centre_planes
    assert seen[-1] == centre_planes(p.noisy.shape[:3], 2, 2, None, dense, 4)


@pytest.mark.parametrize("lattice", [1, 4])
def test_divergence_on_slabs_agrees_with_the_whole_brain(lattice):
    """The perturbed rerun on a third of the brain, scaled to the whole, estimates the same divergence."""
    from workbench.blend import blend_work, divergence_slabs, mppca_with_divergence

    p = simulate_dwi(shape=(24, 24, 30), scheme="dti", snr=10.0, seed=1)
    y = np.moveaxis(p.noisy, -1, 0)
    slabs = divergence_slabs(p.mask, int(p.mask.sum()) // 3)
    inside = sum(int(p.mask[:, :, a:b].sum()) for a, b in slabs)
    assert len(slabs) >= 2 and p.mask.sum() // 3 <= inside < p.mask.sum()
    # the default three slabs sit at the brain's axial quantiles 1/6, 1/2, 5/6, not in one block
    share = np.cumsum(p.mask.sum(axis=(0, 1))) / p.mask.sum()
    thin = divergence_slabs(p.mask, int(p.mask.sum()) // 10)
    assert len(thin) == 3
    for (a, b), q in zip(thin, (1 / 6, 1 / 2, 5 / 6)):
        assert a <= np.searchsorted(share, q) < b
    assert divergence_slabs(p.mask, 0) == [(0, 30)] == divergence_slabs(p.mask, int(p.mask.sum()))
    full_div, full = mppca_with_divergence(y, p.sigma, p.mask, lattice=lattice)
    seen = []
    part_div, part = mppca_with_divergence(y, p.sigma, p.mask, divergence_voxels=int(p.mask.sum()) // 3,
                                           progress=lambda d, t: seen.append((d, t)), lattice=lattice)
    np.testing.assert_array_equal(part, full)
    total = blend_work(p.mask.shape, p.mask, 2, int(p.mask.sum()) // 3, lattice)
    assert seen == [(k + 1, total) for k in range(total)]
    assert np.all(full_div > 0)
    assert np.median(np.abs(part_div / full_div - 1)) < 0.15
