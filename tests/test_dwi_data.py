"""The DWI task data: J-invariant inputs, masks, normalisation, seeded patch sampling."""

import numpy as np
import pytest
import torch

from workbench.config import DataConfig
from workbench.data.dwi import DWIPatchSampler, compute_mask, prepare_subject
from workbench.data.transforms import apply_augment, flip_spatial, sample_augment
from workbench.io_utils import InputError


@pytest.fixture(scope="module")
def subject(small_phantom):
    p = small_phantom
    return prepare_subject(p.noisy, p.bvals, p.bvecs, DataConfig(), mask=p.mask)


def test_layout_and_normalisation(subject, small_phantom):
    n = small_phantom.noisy.shape[-1]
    assert subject.n_volumes == n and subject.n_priors == 3 and subject.in_channels == n + 3  # split MP-PCA, regression, SH
    restored = subject.volumes.numpy().transpose(1, 2, 3, 0) * subject.scale
    assert np.allclose(restored, small_phantom.noisy, rtol=1e-5, atol=1e-3)
    assert 0.5 < float(subject.volumes[:, subject.mask].quantile(0.99)) < 1.5


def test_network_input_never_contains_the_target(subject, small_phantom):
    p = small_phantom
    j = 7
    x = subject.network_input(j)
    assert torch.all(x[subject.n_priors + j] == 0)
    # perturb volume j of the raw data: the input for j (other volumes + priors) is unchanged
    noisy = p.noisy.copy()
    noisy[..., j] += np.random.default_rng(0).normal(0, 50, noisy.shape[:3]).astype(np.float32)
    other = prepare_subject(noisy, p.bvals, p.bvecs, DataConfig(qspace_prior="sh"), mask=p.mask,
                            scale=subject.scale)
    ref = prepare_subject(p.noisy, p.bvals, p.bvecs, DataConfig(qspace_prior="sh"), mask=p.mask,
                          scale=subject.scale)
    assert torch.allclose(other.network_input(j), ref.network_input(j), atol=1e-6)
    assert not torch.allclose(other.network_input(j + 1), ref.network_input(j + 1))


def test_sampler_is_seeded_and_shapes(subject):
    sampler = DWIPatchSampler([subject], patch_size=8)
    a = sampler.sample(3, torch.Generator().manual_seed(5))
    b = sampler.sample(3, torch.Generator().manual_seed(5))
    c = sampler.sample(3, torch.Generator().manual_seed(6))
    assert torch.equal(a.input, b.input) and torch.equal(a.cond, b.cond)
    assert not torch.equal(a.input, c.input)
    assert a.input.shape == (3, subject.in_channels, 8, 8, 8)
    assert a.target.shape == (3, 1, 8, 8, 8) and a.mask.shape == (3, 1, 8, 8, 8)
    for i in range(3):  # the target is volume cond[i] and it is zeroed in the input
        j = int(a.cond[i])
        assert torch.all(a.input[i, subject.n_priors + j] == 0)
        assert a.target[i].abs().sum() > 0
    assert a.mask.sum() > 0


def test_patch_larger_than_volume_uses_whole_axis(subject):
    sampler = DWIPatchSampler([subject], patch_size=64)
    batch = sampler.sample(2, torch.Generator().manual_seed(0))
    assert batch.input.shape[2:] == subject.volumes.shape[1:]


def test_validation_batches_are_fixed(subject):
    sampler = DWIPatchSampler([subject], patch_size=8)
    v1 = sampler.validation_batches()
    sampler.sample(4, torch.Generator().manual_seed(1))
    v2 = sampler.validation_batches()
    assert len(v1) >= 1 and all(torch.equal(a.input, b.input) for a, b in zip(v1, v2))


def test_mixed_volume_counts_are_refused(subject, small_phantom):
    p = small_phantom
    fewer = prepare_subject(p.noisy[..., :10], p.bvals[:10], p.bvecs[:10], DataConfig(), mask=p.mask)
    with pytest.raises(InputError, match="same number of volumes"):
        DWIPatchSampler([subject, fewer])


def test_mask_checks(small_phantom):
    p = small_phantom
    with pytest.raises(InputError, match="mask shape"):
        prepare_subject(p.noisy, p.bvals, p.bvecs, DataConfig(), mask=np.ones((3, 3, 3), bool))
    with pytest.raises(InputError, match="mask is empty"):
        prepare_subject(p.noisy, p.bvals, p.bvecs, DataConfig(), mask=np.zeros(p.mask.shape, bool))


def test_auto_mask_finds_the_brain(small_phantom):
    p = small_phantom
    auto = compute_mask(p.noisy, p.bvals)
    dice = 2 * (auto & p.mask).sum() / (auto.sum() + p.mask.sum())
    assert dice > 0.8


def test_augment_is_seeded_and_consistent():
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    p1, p2 = sample_augment(g1), sample_augment(g2)
    assert p1 == p2 and 0.9 <= p1.intensity <= 1.1
    x = torch.arange(2 * 3 * 4 * 5, dtype=torch.float32).reshape(2, 3, 4, 5)
    y = x[:1].clone()
    xi, yi, _ = apply_augment(p1, x, y)
    assert torch.allclose(xi[:1], yi)  # same transform on image and target
    assert torch.equal(flip_spatial(flip_spatial(x, (0, 2)), (0, 2)), x)


def test_rot90_is_applied_to_all_and_inverts():
    from workbench.data.transforms import AugmentParams, rot90_spatial

    x = torch.rand(2, 4, 4, 3)
    assert torch.equal(rot90_spatial(rot90_spatial(x, 1), 3), x)
    params = AugmentParams((), 1.0, 1)
    xi, yi, mi = apply_augment(params, x, x[:1].clone(), x[:1] > 0.5)
    assert torch.equal(xi[:1], yi) and torch.equal(mi, yi > 0.5)
    assert not torch.equal(xi, x)
    # non-square in-plane patches fall back to half turns (shape kept)
    z = torch.rand(1, 4, 5, 3)
    assert apply_augment(AugmentParams((), 1.0, 1), z, z)[0].shape == z.shape


def test_overwrite_input_normalises_in_place_and_otherwise_leaves_the_data_alone(small_phantom):
    """``overwrite_input`` makes a float32 C-ordered series the subject's volumes (no copy, same
    numbers as the copying path); without it, or for another dtype, the caller's array is untouched."""
    p = small_phantom
    cfg = DataConfig(qspace_prior="both")
    data = np.array(p.noisy, dtype=np.float32, order="C")  # a copy: the session's phantom must not be normalised
    kept = data.copy()
    copied = prepare_subject(data, p.bvals, p.bvecs, cfg, mask=p.mask)
    assert np.array_equal(data, kept) and not np.shares_memory(copied.volumes.numpy(), data)
    owned = prepare_subject(data, p.bvals, p.bvecs, cfg, mask=p.mask, overwrite_input=True)
    assert np.shares_memory(owned.volumes.numpy(), data) and owned.scale == copied.scale
    assert torch.equal(owned.volumes, copied.volumes)
    assert np.array_equal(data, np.moveaxis(copied.volumes.numpy(), 0, -1))  # the data now hold the normalised series
    assert torch.equal(owned.network_input(5), copied.network_input(5))
    as64 = kept.astype(np.float64)
    other = prepare_subject(as64, p.bvals, p.bvecs, cfg, mask=p.mask, overwrite_input=True)
    assert np.array_equal(as64, kept.astype(np.float64))  # float64 is copied (divided in float64: rounding differs)
    torch.testing.assert_close(other.volumes, copied.volumes, rtol=1e-6, atol=1e-7)


def test_denoised_volume_input_never_sees_the_target_noise():
    """``volume_input: denoised`` stays J-invariant: new noise on volume j leaves every volume channel of j's
    input unchanged (MP-PCA without j's fold; the split prior of j's fold-mates, whose regressions never read
    j), 0 beyond the grown brain (where the prior falls back to a regression on every volume); the other
    volumes' channels are less noisy than the noisy volumes and do depend on their own noise."""
    from workbench.data.phantoms import simulate_dwi
    from scipy import ndimage

    ph = simulate_dwi(shape=(17, 18, 9), scheme="dti", snr=10.0, seed=3)
    j, other = (int(v) for v in np.flatnonzero(ph.bvals > 50)[[4, 0]])
    cfg = DataConfig(volume_input="denoised")

    def channels(data, target):
        subject = prepare_subject(data, ph.bvals, ph.bvecs, cfg, mask=ph.mask, scale=1000.0)
        den = subject.denoised  # only the MP-PCA outputs are kept: the volumes outside each fold, float16
        assert den.n_folds == cfg.prior_folds
        for k in range(den.n_folds):
            assert den.others[k].dtype == np.float16
            assert den.others[k].shape == tuple(subject.volumes.shape[1:]) + (int((den.folds != k).sum()),)
        return subject.network_input(target)[subject.n_priors:].numpy(), subject

    moved = ph.noisy.copy()
    moved[..., j] += np.random.default_rng(0).normal(0, ph.sigma, moved.shape[:3]).astype(moved.dtype)
    base, subject = channels(ph.noisy, j)
    np.testing.assert_array_equal(channels(moved, j)[0], base)
    assert np.abs(channels(moved, other)[0] - channels(ph.noisy, other)[0]).max() > 1e-3
    assert not base[j].any()
    grown = ndimage.binary_dilation(ph.mask, iterations=2)
    assert not base[:, ~grown].any()
    dw = np.flatnonzero(ph.bvals > 50)
    dw = dw[dw != j]
    clean = np.moveaxis(ph.clean, -1, 0)[dw][:, ph.mask] / 1000.0
    noisy = subject.volumes.numpy()[dw][:, ph.mask]
    err = lambda x: float(np.sqrt(np.mean((x - clean) ** 2)))
    assert err(base[dw][:, ph.mask]) < 0.8 * err(noisy)
    # the region a patch reads is the same as the whole input cut to it
    region = (slice(3, 12), slice(2, 17), slice(1, 8))
    np.testing.assert_array_equal(subject.network_input(j, region).numpy(),
                                  subject.network_input(j)[(slice(None),) + region].numpy())


def test_denoised_volume_input_needs_the_mppca_prior():
    with pytest.raises(ValueError, match="qspace_prior to 'mppca'"):
        DataConfig(volume_input="denoised", qspace_prior="sh")


def test_denoised_inputs_are_predicted_fold_by_fold_and_released_per_fold():
    """Whole-series inference walks the volumes fold by fold. A target's fold-mates are read from their
    priors, so a fold's priors stay (and its inputs stay exactly the same) until its last volume is
    predicted; then its priors and denoised volumes go back to the OS, the other folds' untouched."""
    from workbench.data.phantoms import simulate_dwi

    p = simulate_dwi(shape=(36, 36, 12), scheme="dti", snr=15.0, seed=3)  # a volume's prior spans whole pages
    subject = prepare_subject(p.noisy, p.bvals, p.bvecs, DataConfig(volume_input="denoised"), mask=p.mask)
    folds = subject.denoised.folds
    order = subject.prediction_order()
    assert sorted(order) == list(range(subject.n_volumes))
    assert np.all(np.diff(folds[order]) >= 0)  # grouped by fold
    first = [j for j in order if folds[j] == 0]
    held = [int((subject.priors[0, j] != 0).sum()) for j in range(subject.n_volumes)]
    last_input = subject.network_input(first[-1])
    for j in first[:-1]:
        subject.release_volume_priors(j)
    assert subject.denoised.others[0] is not None  # fold 0 still has a volume to predict
    assert [int((subject.priors[0, j] != 0).sum()) for j in first] == [held[j] for j in first]
    assert torch.equal(subject.network_input(first[-1]), last_input)
    with pytest.raises(RuntimeError, match="released"):
        subject.network_input(first[0])
    subject.release_volume_priors(first[-1])
    assert subject.denoised.others[0] is None
    assert all(int((subject.priors[0, j] != 0).sum()) < 0.3 * held[j] for j in first)  # its whole pages released
    rest = [j for j in range(subject.n_volumes) if folds[j] != 0]
    assert [int((subject.priors[0, j] != 0).sum()) for j in rest] == [held[j] for j in rest]
    assert all(subject.denoised.others[k] is not None for k in range(1, subject.denoised.n_folds))
    assert prepare_subject(p.noisy, p.bvals, p.bvecs, DataConfig(volume_input="noisy"),
                           mask=p.mask).prediction_order() == list(range(subject.n_volumes))


def test_the_configs_prior_ridge_reaches_the_split_prior(small_phantom):
    """``data.prior_ridge`` is the split prior's regression ridge: prepare_subject's prior channel equals
    split_mppca_prior with that ridge (in the brain; float16 as stored), and another ridge changes it."""
    from workbench.data.qspace import split_mppca_prior

    p = small_phantom
    default = prepare_subject(p.noisy, p.bvals, p.bvecs, DataConfig(), mask=p.mask)
    heavy = prepare_subject(p.noisy, p.bvals, p.bvecs, DataConfig(prior_ridge=1e-2), mask=p.mask)
    norm = (p.noisy / default.scale).astype(np.float32)
    for subject, ridge in ((default, 1e-4), (heavy, 1e-2)):
        direct = split_mppca_prior(norm, p.bvals, p.mask, n_folds=3, ridge=ridge)
        stored = subject.priors[0].numpy().astype(np.float32).transpose(1, 2, 3, 0)
        np.testing.assert_allclose(stored[p.mask], direct[p.mask], rtol=2e-3, atol=2e-3)
    change = np.abs(heavy.priors[0].numpy().astype(np.float32) - default.priors[0].numpy().astype(np.float32))
    change = change.transpose(1, 2, 3, 0)[p.mask]
    assert change.mean() > 1e-3
