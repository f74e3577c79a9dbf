"""Whole-volume inference: tiles cover everything, tiled equals untiled, maps are retrievable."""

import itertools
import math

import numpy as np
import pytest
import torch

from workbench.config import Config, ModelConfig
from workbench.data.qspace import qspace_priors
from workbench.inference import Denoiser, edge_map, predict_tiled
from workbench.tiling import even_tiles, tile_layout, tile_starts


@pytest.mark.parametrize("size,tile,overlap", [(33, 16, 4), (34, 16, 8), (35, 35, 8), (10, 64, 16), (64, 32, 8)])
def test_tile_starts_cover_the_axis(size, tile, overlap):
    starts = tile_starts(size, tile, overlap)
    t = min(tile, size)
    covered = np.zeros(size, bool)
    for s in starts:
        assert 0 <= s <= size - t
        covered[s:s + t] = True
    assert covered.all()
    for a, b in zip(starts, starts[1:]):
        assert a + t - b >= min(overlap, t)  # neighbours overlap


@pytest.mark.parametrize("size,tile,overlap", [(128, 64, 16), (80, 64, 16), (33, 16, 4), (35, 35, 8), (97, 40, 8)])
def test_even_tiles_cover_the_axis_with_no_more_tiles_and_less_work(size, tile, overlap):

    length, starts = even_tiles(size, tile, overlap)
    assert length <= tile and len(starts) <= len(tile_starts(size, tile, overlap))
    assert len(starts) * length <= len(tile_starts(size, tile, overlap)) * min(tile, size)
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s:s + length] = True
    assert covered.all()
    for a, b in zip(starts, starts[1:]):
        assert a + length - b >= min(overlap, length // 2)
    assert even_tiles(128, 64, 16) == (54, [0, 38, 74])


@pytest.mark.parametrize("size", [(128, 128, 80), (96, 96, 60), (33, 34, 35), (256, 200, 150), (70, 9, 41)])
@pytest.mark.parametrize("max_voxels", [None, 262_144, 40_000])
def test_tile_layout_covers_the_volume_within_the_voxel_bound_and_least_work(size, max_voxels):

    layout = tile_layout(size, 96, 16, max_voxels)
    for s, (length, starts) in zip(size, layout):
        assert length <= 96
        covered = np.zeros(s, bool)
        for a in starts:
            covered[a:a + length] = True
        assert covered.all() and starts[-1] + length == s
        for a, b in zip(starts, starts[1:]):
            assert a + length - b >= min(16, length // 2)
    voxels = math.prod(length for length, _ in layout)
    work = math.prod(length * len(starts) for length, starts in layout)
    plain = [even_tiles(s, 96, 16) for s in size]
    if max_voxels is None:
        assert layout == plain
    else:
        assert voxels <= max_voxels
        # no layout of even_tiles with 0-2 more tiles per axis fits the bound with less work
        for extra in itertools.product(range(3), repeat=3):
            cand = []
            for s, k, (length, starts) in zip(size, extra, plain):
                count = len(starts) + k
                cand_len = -(-(s + (count - 1) * 16) // count) if k else length
                cand.append((cand_len, count))
            if math.prod(c[0] for c in cand) <= max_voxels and all(c[0] - 16 >= 1 or c[1] == 1 for c in cand):
                assert work <= math.prod(c[0] * c[1] for c in cand)


def test_tile_layout_example_and_fallback():

    assert tile_layout((128, 128, 80), 96, 16) == [(72, [0, 56]), (72, [0, 56]), (80, [0])]
    assert tile_layout((128, 128, 80), 96, 16, 327_680) == [(72, [0, 56]), (54, [0, 38, 74]), (80, [0])]
    assert tile_layout((128, 128, 80), 96, 16, 262_144) == [(72, [0, 56]), (72, [0, 56]), (48, [0, 32])]
    assert tile_layout((128, 128, 80), 96, 16, 131_072) == [(54, [0, 38, 74]), (44, [0, 28, 56, 84]), (48, [0, 32])]
    assert Config().inference.tile_voxels == 131_072
    # nothing fits 512 voxels: the shortest tiles an axis of 40 can take (9 of 19 = ceil((40 + 8 * 16) / 9))
    assert [length for length, _ in tile_layout((40, 40, 40), 96, 16, 512)] == [19, 19, 19]


def test_predict_tiled_with_a_voxel_bound_matches_untiled():
    model = _model()
    x = torch.rand(5, 35, 34, 33)
    whole = predict_tiled(model, x, 1, tile=64, overlap=0, amp=False)
    bounded = predict_tiled(model, x, 1, tile=64, overlap=10, amp=False, max_voxels=35 * 34 * 20)
    rel = float((whole - bounded).abs().mean() / whole.abs().mean())
    assert rel < 0.02, rel


def _model(in_ch=5, n=3):
    from workbench.models import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(name="multiscale", base_filters=8, embedding_dim=8), in_channels=in_ch,
                        out_channels=1, num_conditions=n, residual_channel=0)
    with torch.no_grad():  # make the correction non-trivial so tiling errors would show
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def test_tiled_equals_untiled_within_tolerance():
    model = _model()
    x = torch.rand(5, 35, 34, 33)
    whole = predict_tiled(model, x, 1, tile=64, overlap=0, amp=False)
    tiled = predict_tiled(model, x, 1, tile=20, overlap=10, amp=False)
    assert whole.shape == (1, 35, 34, 33)
    err = (whole - tiled).abs()
    rel = float(err.mean() / whole.abs().mean())
    assert rel < 0.02, rel
    # without overlap the seams are visibly worse: blending does something
    seams = predict_tiled(model, x, 1, tile=20, overlap=0, amp=False)
    assert float((whole - seams).abs().mean()) > float(err.mean())


def test_tiled_amp_close_to_float32():
    model = _model()
    x = torch.rand(5, 20, 20, 20)
    a = predict_tiled(model, x, 0, tile=16, overlap=4, amp=False)
    b = predict_tiled(model, x, 0, tile=16, overlap=4, amp=True)
    assert b.dtype == torch.float32
    assert float((a - b).abs().mean()) < 0.05 * float(a.abs().mean())


def test_edge_map_matches_loss_operator():
    from workbench.losses import sobel_magnitude_3d

    vol = np.random.default_rng(0).random((9, 10, 11)).astype(np.float32)
    expected = sobel_magnitude_3d(torch.from_numpy(vol)[None, None])[0, 0].numpy()
    assert np.allclose(edge_map(vol), expected)


def test_denoiser_on_phantom_and_attention(small_phantom):
    from workbench.data.dwi import prepare_subject

    p = small_phantom
    cfg = Config(model=ModelConfig(name="denoiser", base_filters=8, embedding_dim=8))
    subject = prepare_subject(p.noisy, p.bvals, p.bvecs, cfg.data, mask=p.mask)
    from workbench.models import build_model

    model = build_model(cfg.model, in_channels=subject.in_channels, out_channels=1,
                        num_conditions=subject.n_volumes, residual_channel=0)
    den = Denoiser(model, cfg, subject.n_volumes, device="cpu", amp=False)
    calls = []
    out = den.denoise(p.noisy, p.bvals, p.bvecs, p.mask, progress=lambda d, t: calls.append((d, t)))
    assert out.denoised.shape == p.noisy.shape and out.denoised.dtype == np.float32
    assert calls[-1] == (p.noisy.shape[-1], p.noisy.shape[-1])
    assert out.heldout_mse > 0 and np.isfinite(out.heldout_mse)
    # an untrained net with residual on the regression prior already beats the noisy input
    err = lambda a: np.sqrt(np.mean((a[p.mask] - p.clean[p.mask]) ** 2))
    assert err(out.denoised) < err(p.noisy)
    # shrinkage toward the noisy volume with the true sigma: Wiener weights in [0, 1] that lower the error
    cfg.inference.mppca_blend = False
    post = den.denoise(p.noisy, p.bvals, p.bvecs, p.mask, sigma=p.sigma)
    assert post.shrinkage.shape == (p.noisy.shape[-1],) and np.all((post.shrinkage >= 0) & (post.shrinkage <= 1))
    assert post.shrinkage.max() > 0 and post.blend_weights is None
    dw = p.bvals > 50
    err_dw = lambda a: np.sqrt(np.mean((a[..., dw][p.mask] - p.clean[..., dw][p.mask]) ** 2))
    assert err_dw(post.denoised) < err_dw(out.denoised)
    # the default: SURE-weighted blend with MP-PCA replaces the shrinkage and lowers the error further
    cfg.inference.mppca_blend = True
    blend = den.denoise(p.noisy, p.bvals, p.bvecs, p.mask, sigma=p.sigma)
    assert blend.shrinkage.size == 0 and blend.blend_weights.shape == (p.noisy.shape[-1], 3)  # net, MP-PCA, noisy
    assert err_dw(blend.denoised) < err_dw(post.denoised)
    # outside the mask MP-PCA fills in: air is closer to its clean value (0) than the passed-through noise
    air = lambda a: np.sqrt(np.mean(a[~p.mask] ** 2))
    assert air(blend.denoised) < 0.7 * air(post.denoised)
    maps = den.attention_maps(subject, 3)
    assert maps and all(m.shape == p.noisy.shape[:3] for m in maps.values())
    assert all(0 <= m.min() and m.max() <= 1 for m in maps.values())
    from workbench.io_utils import InputError

    with pytest.raises(InputError, match="trained for model 'denoiser' with"):
        den.check_series(p.noisy.shape[-1] + 1)


@pytest.mark.parametrize("snr", [10, 20])
@pytest.mark.parametrize("blend", [False, True], ids=["heldout", "sure-blend"])
def test_no_reference_rmse_estimate_tracks_the_truth(snr, blend):
    """Without the blend: the held-out loss, corrected for Rician variance and bias, estimates the J-invariant
    prediction's RMSE to clean. With it (the default): SURE of the blend estimates the result's RMSE."""
    from workbench.data.dwi import prepare_subject
    from workbench.data.phantoms import simulate_dwi
    from workbench.models import build_model

    p = simulate_dwi(shape=(24, 24, 12), scheme="dti", snr=snr, seed=1)
    cfg = Config(model=ModelConfig(name="denoiser", base_filters=8, embedding_dim=8))
    if not blend:  # score the J-invariant prediction
        cfg.inference.shrinkage = cfg.inference.rician_correction = cfg.inference.mppca_blend = False
    subject = prepare_subject(p.noisy, p.bvals, p.bvecs, cfg.data, mask=p.mask)
    torch.manual_seed(0)
    model = build_model(cfg.model, in_channels=subject.in_channels, num_conditions=subject.n_volumes,
                        residual_channel=0)
    out = Denoiser(model, cfg, subject.n_volumes, device="cpu", amp=False).denoise(
        p.noisy, p.bvals, p.bvecs, p.mask, sigma=p.sigma)
    assert (out.blend_weights is not None) == blend
    true = float(np.sqrt(np.mean((out.denoised[p.mask] - p.clean[p.mask]) ** 2)))
    assert abs(out.est_rmse - true) < 0.15 * true
    if not blend:
        naive = float(np.sqrt(max(out.heldout_mse - p.sigma**2, 0.0)))
        assert abs(out.est_rmse - true) <= abs(naive - true)


def test_free_water_floor_clamps_only_impossible_decay():
    from workbench.inference import FREE_WATER_DIFFUSIVITY, apply_free_water_floor

    bvals = np.array([0.0, 1000.0, 2000.0, 0.0])
    vols = np.zeros((4, 3, 2, 2), np.float32)
    vols[[0, 3]] = 100.0
    vols[1] = 50.0  # plausible: above 100 exp(-3)
    vols[2, 0] = 0.0  # impossible: below the free-water decay
    vols[2, 1:] = 30.0
    out = apply_free_water_floor(vols, bvals)
    assert np.allclose(out[1], 50.0) and np.allclose(out[[0, 3]], 100.0)
    assert np.allclose(out[2, 0], 100.0 * np.exp(-2000 * FREE_WATER_DIFFUSIVITY), rtol=1e-5)
    assert np.allclose(out[2, 1:], 30.0)
    assert apply_free_water_floor(vols, None) is vols  # no b-values: nothing to do
    assert apply_free_water_floor(vols, np.full(4, 1000.0)) is vols  # no b0


def test_post_process_steps_follow_the_flags():
    from workbench.inference import post_process
    from workbench.rician import invert_rician_mean

    rng = np.random.default_rng(0)
    preds = rng.random((4, 5, 5, 5)).astype(np.float32) + 1.0
    noisy = preds + rng.normal(0, 0.1, preds.shape).astype(np.float32)
    heldout, noise_var = np.full(4, 0.04), np.full(4, 0.01)
    bvals = np.array([0.0, 1000, 1000, 1000])
    same, k = post_process(preds, noisy, heldout, noise_var, 0.1, bvals, shrinkage=False,
                           rician_correction=False, free_water_floor=False)
    assert same is preds and k.size == 0
    shrunk, k = post_process(preds, noisy, heldout, noise_var, 0.1, bvals, rician_correction=False,
                             free_water_floor=False)
    assert np.allclose(k, 0.75) and np.allclose(shrunk, preds + 0.75 * (noisy - preds), atol=1e-6)
    full, _ = post_process(preds, noisy, heldout, noise_var, 0.1, bvals, free_water_floor=False)
    assert np.allclose(full, invert_rician_mean(shrunk, 0.1))
    nosigma, k = post_process(preds, noisy, heldout, noise_var, None, bvals)  # only the floor runs
    assert k.size == 0 and np.all(nosigma >= preds)


def test_denoise_series_without_air_takes_sigma_from_mppca():
    """A field of view cropped to the brain has no air for the background estimate: the report says the
    sigma came from MP-PCA, it is close to the truth, and the Rician correction still runs."""
    from workbench import api
    from workbench.data.nifti import DWISeries
    from workbench.data.phantoms import simulate_dwi

    p = simulate_dwi((24, 24, 12), scheme="multishell", snr=20.0, seed=2)
    xs, ys, zs = (np.flatnonzero(p.mask.any(axis=a)) for a in ((1, 2), (0, 2), (0, 1)))
    crop = (slice(xs[0] + 3, xs[-1] - 2), slice(ys[0] + 3, ys[-1] - 2), slice(zs[0] + 1, zs[-1]))
    series = DWISeries(p.noisy[crop], p.affine, None, p.bvals, p.bvecs)
    cfg = Config(model=ModelConfig(name="denoiser", base_filters=8, embedding_dim=8))
    cfg.data.patch_size, cfg.data.batch_size = 8, 2
    cfg.train.steps, cfg.train.val_every, cfg.train.checkpoint_every = 3, 3, 3
    data = series.data.copy()
    out, report = api.denoise_series(series, config=cfg, mask=p.mask[crop])
    assert out.shape == series.data.shape and np.isfinite(out).all()
    assert report.extra["sigma_source"] == "mppca" and report.extra["rician_correction"]
    assert report.sigma == pytest.approx(p.sigma, rel=0.2)
    assert np.array_equal(series.data, data)  # the caller's series is left alone by default
    # consumed (as `workbench denoise` does with the series it loaded): worked on in place, same result
    owned = DWISeries(data.copy(), p.affine, None, p.bvals, p.bvecs)
    again, report2 = api.denoise_series(owned, config=cfg, mask=p.mask[crop], consume=True)
    assert report2.sigma == report.sigma and not np.array_equal(owned.data, data)
    np.testing.assert_allclose(again, out, rtol=1e-5, atol=1e-5 * float(out.max()))


def test_air_outside_the_mask_is_mppca_or_passed_through_not_extrapolated():
    """Outside the brain mask the output is full-data MP-PCA (the default) or, without the blend, the input,
    then the Rician correction, so air comes out near 0 (not a grey level from a regression's intercept, nor
    a ring at the mask's edge)."""
    from workbench.baselines import mppca
    from workbench.data.dwi import prepare_subject
    from workbench.data.phantoms import simulate_dwi
    from workbench.models import build_model
    from workbench.rician import invert_rician_mean

    p = simulate_dwi(shape=(24, 24, 12), scheme="dti", snr=10, seed=4)
    cfg = Config(model=ModelConfig(name="denoiser", base_filters=8, embedding_dim=8))
    subject = prepare_subject(p.noisy, p.bvals, p.bvecs, cfg.data, mask=p.mask)
    torch.manual_seed(0)
    model = build_model(cfg.model, in_channels=subject.in_channels, num_conditions=subject.n_volumes,
                        residual_channel=0)
    den = Denoiser(model, cfg, subject.n_volumes, device="cpu", amp=False)
    air = ~subject.mask.numpy()
    assert air.sum() > 100
    dw = p.bvals > 50
    cfg.inference.mppca_stride = 1  # a patch on every voxel: DIPY's MP-PCA
    out = den.denoise(p.noisy, p.bvals, p.bvecs, p.mask, sigma=p.sigma, subject=subject)
    expected = np.clip(invert_rician_mean(mppca(p.noisy, p.bvals)[air], p.sigma), 0, None)
    assert np.allclose(out.denoised[air][:, ~dw], expected[:, ~dw], atol=1e-3 * p.sigma)
    assert np.median(out.denoised[air]) < 0.3 * p.sigma  # Rayleigh air (mean 1.25 sigma) goes to ~0
    cfg.inference.mppca_stride = 2  # the default: every second voxel of the air
    cfg.inference.mppca_lattice = 1  # and every voxel of the brain: its values as at stride 1
    strided = den.denoise(p.noisy, p.bvals, p.bvecs, p.mask, sigma=p.sigma, subject=subject)
    np.testing.assert_allclose(strided.denoised[~air], out.denoised[~air], rtol=0, atol=1e-3 * p.sigma)
    assert np.median(strided.denoised[air]) < 0.3 * p.sigma
    cfg.inference.mppca_blend = False
    out = den.denoise(p.noisy, p.bvals, p.bvecs, p.mask, sigma=p.sigma, subject=subject)
    expected = np.clip(invert_rician_mean(p.noisy[air], p.sigma), 0, None)
    b0_air = expected[:, ~dw]
    assert np.allclose(out.denoised[air][:, ~dw], b0_air, atol=1e-3 * p.sigma)
    assert np.median(out.denoised[air]) < 0.3 * p.sigma  # Rayleigh air (mean 1.25 sigma) goes to ~0


def test_lazy_input_tiles_equal_the_whole_input_and_priors_can_be_released(small_phantom):
    """Whole-volume inference builds each tile's input on demand: the same numbers as the whole
    (P + N)-channel input; released priors make a second prediction fail with a clear message."""
    from workbench.data.dwi import prepare_subject
    from workbench.io_utils import InputError

    p = small_phantom
    cfg = Config(model=ModelConfig(name="multiscale", base_filters=8, embedding_dim=8))
    subject = prepare_subject(p.noisy, p.bvals, p.bvecs, cfg.data, mask=p.mask)
    assert subject.priors.dtype == torch.float16  # half the memory of the series' priors
    model = _model(subject.in_channels, subject.n_volumes)
    j = 2
    whole = subject.network_input(j)
    assert whole.dtype == torch.float32 and float(whole[subject.n_priors + j].abs().max()) == 0.0
    stored = subject.priors.shape[0]  # the split MP-PCA prior; the regression and SH priors are computed per region
    assert stored == 1 and subject.n_priors == 3
    assert torch.equal(whole[:stored], subject.priors[:, j].float())
    norm = (p.noisy / subject.scale).astype(np.float32)
    linear = qspace_priors(norm, p.bvals, p.bvecs, p.mask, "both")[..., j]  # (2, X, Y, Z), written out
    np.testing.assert_allclose(whole[stored:subject.n_priors].numpy(), linear, rtol=1e-5, atol=1e-5)
    lazy = subject.lazy_input(j)
    assert lazy.shape == tuple(whole.shape)
    region = (slice(None), slice(3, 17), slice(0, 9), slice(2, 12))
    assert torch.equal(lazy[region], whole[region])
    a = predict_tiled(model, whole, j, tile=12, overlap=4, amp=False)
    b = predict_tiled(model, lazy, j, tile=12, overlap=4, amp=False)
    assert torch.equal(a, b)
    storage = subject.priors.untyped_storage()
    den = Denoiser(model, cfg, subject.n_volumes, device="cpu", amp=False)
    out = den.denoise(p.noisy, p.bvals, p.bvecs, p.mask, subject=subject, release_priors=True)
    assert out.denoised.shape == p.noisy.shape and not subject.has_priors
    # the storage itself is dropped (an empty view of it would keep every byte alive)
    assert subject.priors.untyped_storage().nbytes() == 0 and storage.nbytes() > 0
    assert subject.priors.shape == (stored, 0) + tuple(subject.volumes.shape[1:])
    with pytest.raises(InputError, match="released"):
        den.denoise(p.noisy, p.bvals, p.bvecs, p.mask, subject=subject)
    # one volume's priors handed back (as whole-series inference does after each volume): its input is
    # refused, the others' are untouched, and the series counts as released
    subject = prepare_subject(p.noisy, p.bvals, p.bvecs, cfg.data, mask=p.mask)
    other = subject.network_input(j + 1)
    subject.release_volume_priors(j)
    assert not subject.has_priors
    with pytest.raises(RuntimeError, match=f"volume {j} were released"):
        subject.network_input(j)
    assert torch.equal(subject.network_input(j + 1), other)


def test_free_water_floor_in_place_equals_a_new_array():
    from workbench.inference import apply_free_water_floor, free_water_floor

    rng = np.random.default_rng(1)
    bvals = np.array([0.0, 1000.0, 2000.0, 3000.0, 5.0])
    vols = rng.uniform(0.0, 100.0, (5, 7, 6, 5)).astype(np.float32)
    new = apply_free_water_floor(vols, bvals)
    assert new is not vols and not np.array_equal(new, vols)  # some voxels were below the floor
    floor = free_water_floor(vols, bvals)
    assert len(floor) == 5 and np.isneginf(floor[0]).all() and np.isneginf(floor[4]).all()
    assert np.allclose(floor[2], (vols[0] + vols[4]) / 2 * np.exp(-2000 * 3.0e-3), rtol=1e-6)
    same = vols.copy()
    assert apply_free_water_floor(same, bvals, out=same) is same
    assert np.array_equal(same, new)
