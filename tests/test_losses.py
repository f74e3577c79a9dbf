"""Tests for workbench.losses: known values, masks, Sobel, gradients, weights, composite."""

import threading

import numpy as np
import pytest
import torch
from scipy import ndimage

from workbench import losses as L

NAMES = ["l1", "mse", "rmse", "charbonnier", "edge", "gradient", "ssim", "multiscale", "fft", "perceptual",
         "diffusion", "projection"]
#: the stateless terms (perceptual needs a feature network the user supplies: tests/sr/test_perceptual.py;
#: diffusion is computed by the SR3 objective: tests/sr/test_sr3.py)
PURE = [n for n in NAMES if n not in ("perceptual", "diffusion", "projection")]


def _rand(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g)


def _ramp(shape, axis, slope=1.0):
    """(1, 1, *shape) ramp along spatial axis 0, 1 or 2."""
    grids = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in shape], indexing="ij")
    return (slope * grids[axis])[None, None]


def _box_mask(shape=(8, 9, 10)):
    m = torch.zeros(1, 1, *shape)
    m[..., 1:6, 2:8, 2:9] = 1.0
    return m


# --------------------------------------------------------------------------- registry
def test_registry_keys_and_get_loss():
    assert list(L.LOSSES) == NAMES
    assert L.get_loss("ssim") is L.ssim
    with pytest.raises(ValueError) as e:
        L.get_loss("style")
    for n in NAMES:
        assert n in str(e.value)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        L.l1(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 5))
    with pytest.raises(ValueError):
        L.l1(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 4), torch.ones(1, 1, 4, 4, 5))


# --------------------------------------------------------------------------- known values
def test_pointwise_known_values():
    t = _rand(2, 3, 5, 6, 7)
    p = t + 0.5
    assert L.l1(p, t).item() == pytest.approx(0.5, abs=1e-6)
    assert L.mse(p, t).item() == pytest.approx(0.25, abs=1e-6)
    assert L.rmse(p, t).item() == pytest.approx(0.5, abs=1e-6)
    assert L.charbonnier(p, t).item() == pytest.approx(0.5, abs=1e-5)
    # Charbonnier ~ L1 for large errors, ~eps at zero error
    assert L.charbonnier(t + 3.0, t).item() == pytest.approx(3.0, rel=1e-6)
    assert L.charbonnier(t, t).item() == pytest.approx(1e-3, rel=1e-4)
    assert L.charbonnier(t, t, eps=0.1).item() == pytest.approx(0.1, rel=1e-4)
    # masked mean divides by the mask sum (times C): half-weighted voxels
    m = torch.zeros(2, 1, 5, 6, 7)
    m[:, :, :2] = 1.0
    m[:, :, 2:3] = 0.5
    d = torch.zeros_like(t)
    d[:, :, :2] = 1.0
    d[:, :, 2:3] = 4.0
    expected = (1.0 * 2 + 4.0 * 0.5) / (2 + 0.5)
    assert L.l1(t + d, t, m).item() == pytest.approx(expected, rel=1e-6)


def test_ssim_identical_zero_and_noise_positive():
    t = _rand(1, 2, 9, 10, 11)
    assert abs(L.ssim(t, t).item()) < 1e-5
    small = L.ssim(t + 0.05 * _rand(1, 2, 9, 10, 11, seed=1), t).item()
    large = L.ssim(t + 0.5 * _rand(1, 2, 9, 10, 11, seed=1), t).item()
    assert 0 < small < large <= 2
    # tiny volumes shrink the window instead of failing
    tiny = _rand(1, 1, 2, 3, 4)
    assert abs(L.ssim(tiny, tiny).item()) < 1e-5
    assert L.ssim(tiny + 0.3 * _rand(1, 1, 2, 3, 4, seed=2), tiny).item() > 0


def test_gradient_loss_known_value():
    t = _ramp((5, 6, 7), axis=2)
    # |d(2 t)| = 2 vs |d t| = 1 along W, 0 elsewhere
    assert L.gradient(2 * t, t).item() == pytest.approx(1.0, abs=1e-6)
    assert L.gradient(t + 3.0, t).item() == pytest.approx(0.0, abs=1e-6)  # offsets carry no gradient
    assert L.gradient(-t, t).item() == pytest.approx(0.0, abs=1e-6)  # magnitudes, as in Mathieu et al.


def test_edge_loss_known_value():
    r = _ramp((6, 7, 8), axis=1)
    assert L.edge(r, r).item() == 0.0
    assert L.edge(2 * r, r).item() == pytest.approx(L.sobel_magnitude_3d(r).mean().item(), rel=1e-6)
    assert L.edge(r + 5.0, r).item() == pytest.approx(0.0, abs=1e-6)


def test_multiscale_known_values_and_small_volumes():
    t = _rand(1, 2, 8, 8, 12)
    assert L.multiscale(t + 0.25, t).item() == pytest.approx(0.25, abs=1e-6)
    p = t + 0.1 * _rand(1, 2, 8, 8, 12, seed=3)
    pool = torch.nn.functional.avg_pool3d
    manual = np.mean([(p - t).abs().mean().item(),
                      (pool(p, 2) - pool(t, 2)).abs().mean().item(),
                      (pool(p, 4) - pool(t, 4)).abs().mean().item()])
    assert L.multiscale(p, t).item() == pytest.approx(manual, rel=1e-5)
    # 6 // 4 = 1 < 2: the 1/4 scale is skipped
    t6, p6 = t[..., :6, :6, :6], p[..., :6, :6, :6]
    manual6 = np.mean([(p6 - t6).abs().mean().item(), (pool(p6, 2) - pool(t6, 2)).abs().mean().item()])
    assert L.multiscale(p6, t6).item() == pytest.approx(manual6, rel=1e-5)
    assert L.multiscale(p[..., :3, :3, :3], t[..., :3, :3, :3]).item() == pytest.approx(
        L.l1(p[..., :3, :3, :3], t[..., :3, :3, :3]).item(), rel=1e-6)


def test_multiscale_pools_a_depth_one_slice_in_plane():
    t = _rand(2, 1, 16, 12, 1)
    p = t + 0.1 * _rand(2, 1, 16, 12, 1, seed=4)
    pool = torch.nn.functional.avg_pool3d
    manual = np.mean([(p - t).abs().mean().item(),
                      (pool(p, (2, 2, 1)) - pool(t, (2, 2, 1))).abs().mean().item(),
                      (pool(p, (4, 4, 1)) - pool(t, (4, 4, 1))).abs().mean().item()])
    assert L.multiscale(p, t).item() == pytest.approx(manual, rel=1e-5)


def test_diffusion_term_is_only_computed_by_its_objective():
    from workbench.loss_weights import CompositeLoss

    t = _rand(1, 1, 4, 4, 4)
    with pytest.raises(ValueError, match="sr3"):
        CompositeLoss({"l1": 1.0, "diffusion": 1.0})(t + 1, t)
    total, terms = CompositeLoss({"l1": 1.0, "diffusion": 1.0})(t + 1, t, skip=("diffusion",))
    assert terms == {"l1": pytest.approx(1.0)} and total.item() == pytest.approx(1.0)


def test_fft_known_value():
    t = torch.zeros(1, 1, 4, 5, 6)
    # constant c: only the DC bin, |DC| = c * sqrt(N) with norm="ortho"; rfft keeps 6 // 2 + 1 bins on W
    c, n_vox, n_bins = 0.5, 4 * 5 * 6, 4 * 5 * 4
    assert L.fft(t + c, t).item() == pytest.approx(c * n_vox ** 0.5 / n_bins, rel=1e-5)
    r = _rand(1, 1, 4, 5, 6)
    assert L.fft(r, r).item() == 0.0


# --------------------------------------------------------------------------- masks
@pytest.mark.parametrize("name", PURE)
def test_masked_loss_ignores_voxels_outside_mask(name):
    fn = L.LOSSES[name]
    m = _box_mask()
    t = _rand(1, 2, 8, 9, 10)
    p = t + 0.2 * _rand(1, 2, 8, 9, 10, seed=1) - 0.1
    base = fn(p, t, m).item()
    noise_p, noise_t = 5 * _rand(1, 2, 8, 9, 10, seed=2), 5 * _rand(1, 2, 8, 9, 10, seed=3)
    p2, t2 = torch.where(m > 0, p, noise_p), torch.where(m > 0, t, noise_t)
    assert fn(p2, t2, m).item() == pytest.approx(base, rel=1e-5, abs=1e-7)
    # ... while a change inside the mask does move it
    p3 = p.clone()
    p3[..., 3, 4, 5] += 1.0
    assert fn(p3, t, m).item() != pytest.approx(base, rel=1e-5, abs=1e-7)


@pytest.mark.parametrize("name", PURE)
def test_all_ones_mask_equals_no_mask(name):
    fn = L.LOSSES[name]
    t = _rand(2, 2, 6, 7, 8)
    p = t + 0.3 * _rand(2, 2, 6, 7, 8, seed=4)
    assert fn(p, t, torch.ones(2, 1, 6, 7, 8)).item() == pytest.approx(fn(p, t).item(), rel=1e-5)


# --------------------------------------------------------------------------- gradients / dtype
@pytest.mark.parametrize("name", PURE)
@pytest.mark.parametrize("masked", [False, True])
def test_gradients_flow_and_are_finite(name, masked):
    fn = L.LOSSES[name]
    t = _rand(1, 2, 7, 8, 9)
    m = _box_mask((7, 8, 9)) if masked else None
    p = (t + 0.2 * _rand(1, 2, 7, 8, 9, seed=5)).requires_grad_()
    fn(p, t, m).backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    # at pred == target (sqrt-based losses) and on constant inputs (Sobel at 0)
    for target in (t, torch.full_like(t, 0.7)):
        q = target.clone().requires_grad_()
        value = fn(q, target, m)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(q.grad).all()


@pytest.mark.parametrize("name", PURE)
def test_float32_under_autocast_and_for_half_inputs(name):
    fn = L.LOSSES[name]
    t = _rand(1, 1, 6, 6, 6)
    p = t + 0.2 * _rand(1, 1, 6, 6, 6, seed=6)
    ref = fn(p, t).item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fn(p, t)
    assert out.dtype == torch.float32 and out.item() == pytest.approx(ref, rel=1e-5, abs=1e-7)
    out16 = fn(p.bfloat16(), t.bfloat16())
    assert out16.dtype == torch.float32


# --------------------------------------------------------------------------- Sobel
@pytest.mark.parametrize("shape", [(7, 9, 11), (6, 8, 10), (5, 6, 7)])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_sobel_ramp_gives_unit_magnitude_and_constant_zero(shape, axis):
    mag = L.sobel_magnitude_3d(_ramp(shape, axis, slope=1.0))
    assert torch.allclose(mag[..., 1:-1, 1:-1, 1:-1], torch.ones(()), atol=1e-6)
    mag3 = L.sobel_magnitude_3d(_ramp(shape, axis, slope=3.0))
    assert torch.allclose(mag3[..., 1:-1, 1:-1, 1:-1], torch.full((), 3.0), atol=1e-5)
    # replicate padding: no spurious edges for a constant, even at the border
    assert (L.sobel_magnitude_3d(torch.full((1, 2, *shape), 4.2)) == 0).all()


def test_sobel_kernel_is_truly_3d():
    delta = torch.zeros(1, 1, 5, 5, 5, dtype=torch.float64)
    delta[0, 0, 2, 2, 2] = 1.0
    mag = L.sobel_magnitude_3d(delta)[0, 0]
    # Every corner of the 3x3x3 support responds, each of the 3 kernels being +-1*1*1/32 there;
    # a 2D Sobel kernel (the design note's) has no support off its plane.
    corner = 3 ** 0.5 / 32
    for i in (1, 3):
        for j in (1, 3):
            for k in (1, 3):
                assert mag[i, j, k].item() == pytest.approx(corner)
    # face neighbours: only the derivative along that axis, 1 * 2 * 2 / 32
    assert mag[1, 2, 2].item() == pytest.approx(4 / 32)
    assert mag[2, 2, 1].item() == pytest.approx(4 / 32)
    assert mag[2, 2, 2].item() == 0.0  # centre: all derivatives vanish
    assert (mag[0] == 0).all() and (mag[:, :, 4] == 0).all()  # nothing beyond the support


@pytest.mark.parametrize("shape", [(2, 3, 7, 9, 5), (1, 1, 6, 4, 8), (1, 2, 1, 5, 3)])
def test_sobel_matches_scipy_and_is_per_channel(shape):
    x = torch.from_numpy(np.random.default_rng(0).normal(size=shape))
    mag = L.sobel_magnitude_3d(x)
    assert mag.shape == x.shape and mag.dtype == torch.float64
    xn = x.numpy()
    for b in range(shape[0]):
        for c in range(shape[1]):
            v = xn[b, c]
            ref = np.sqrt(sum(ndimage.sobel(v, axis=a, mode="nearest") ** 2 for a in range(3))) / 32
            np.testing.assert_allclose(mag[b, c].numpy(), ref, atol=1e-12)
            # the same volume alone (3D input) gives the identical result
            assert torch.equal(L.sobel_magnitude_3d(x[b, c]), mag[b, c])
    # axes are treated alike: permuting the volume permutes the magnitude
    assert torch.allclose(L.sobel_magnitude_3d(x.permute(0, 1, 4, 2, 3)), mag.permute(0, 1, 4, 2, 3))


def test_sobel_kernels_are_outer_products_and_match_the_separable_magnitude():
    k = L.sobel_kernels_3d()
    d, s = torch.tensor([-1.0, 0.0, 1.0], dtype=torch.float64), torch.tensor([1.0, 2.0, 1.0], dtype=torch.float64)
    assert torch.equal(k[0] * 32, d[:, None, None] * s[None, :, None] * s[None, None, :])
    assert torch.equal(k[2] * 32, s[:, None, None] * s[None, :, None] * d[None, None, :])
    x = torch.from_numpy(np.random.default_rng(2).normal(size=(2, 3, 5, 8, 7)))
    xp = torch.nn.functional.pad(x.reshape(6, 1, 5, 8, 7), (1,) * 6, mode="replicate")
    g = torch.nn.functional.conv3d(xp, k[:, None])
    assert torch.allclose(g.pow(2).sum(1).sqrt().reshape(x.shape), L.sobel_magnitude_3d(x), atol=1e-12)


def test_sobel_float32_matches_float64_and_gradient_at_zero():
    x = torch.from_numpy(np.random.default_rng(1).normal(size=(1, 1, 5, 6, 7)))
    assert torch.allclose(L.sobel_magnitude_3d(x.float()).double(), L.sobel_magnitude_3d(x), atol=1e-5)
    c = torch.ones(1, 1, 4, 4, 4, requires_grad=True)
    L.sobel_magnitude_3d(c).sum().backward()
    assert torch.isfinite(c.grad).all()


# --------------------------------------------------------------------------- LossWeights
def test_loss_weights_validation_messages():
    with pytest.raises(ValueError) as e:
        L.LossWeights({"l1": 1.0, "style": 0.1})
    assert "style" in str(e.value) and all(n in str(e.value) for n in NAMES)
    with pytest.raises(ValueError, match="ssim"):
        L.LossWeights({"ssim": -0.1})
    w = L.LossWeights({"l1": 1.0})
    with pytest.raises(ValueError) as e:
        w.set("vgg", 1.0)
    assert all(n in str(e.value) for n in NAMES)
    for bad in (-1.0, float("nan"), float("inf"), "abc"):
        with pytest.raises(ValueError):
            w.set("l1", bad)
    assert w.get() == {"l1": 1.0} and w.version == 0 and w.history == []


def test_loss_weights_set_history_version_copy():
    w = L.LossWeights({"l1": 1.0, "ssim": 0.5})
    snapshot = w.get()
    snapshot["l1"] = 99.0
    assert w.get()["l1"] == 1.0 and w.as_dict() == {"l1": 1.0, "ssim": 0.5}
    assert w.set("ssim", 0.2, step=10) == 0.5
    assert w.set("edge", 0.1) == 0.0
    assert w.version == 2
    assert w.history == [{"step": 10, "name": "ssim", "old": 0.5, "new": 0.2},
                         {"step": None, "name": "edge", "old": 0.0, "new": 0.1}]
    assert w.get() == {"l1": 1.0, "ssim": 0.2, "edge": 0.1}


def test_loss_weights_concurrent_sets():
    w = L.LossWeights({"l1": 1.0})

    def worker(k):
        for i in range(200):
            w.set("mse", float(k * 1000 + i), step=i)
            w.get()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert w.version == 800 and len(w.history) == 800
    # the history is a consistent chain: each "old" is the previous "new"
    hist = w.history
    assert all(a["new"] == b["old"] for a, b in zip(hist, hist[1:]))


# --------------------------------------------------------------------------- CompositeLoss
def test_composite_total_terms_and_zero_weights_absent():
    t = _rand(1, 1, 6, 7, 8)
    p = (t + 0.2 * _rand(1, 1, 6, 7, 8, seed=7)).requires_grad_()
    loss = L.CompositeLoss({"l1": 1.0, "ssim": 0.5, "edge": 0.0, "fft": 2.0})
    assert isinstance(loss.weights, L.LossWeights)
    total, terms = loss(p, t)
    assert set(terms) == {"l1", "ssim", "fft"}
    assert all(isinstance(v, float) for v in terms.values())
    assert terms["l1"] == pytest.approx(L.l1(p, t).item())
    assert total.item() == pytest.approx(terms["l1"] + 0.5 * terms["ssim"] + 2.0 * terms["fft"], rel=1e-6)
    total.backward()
    assert torch.isfinite(p.grad).all()


def test_composite_reads_weights_every_call_including_from_another_thread():
    t = _rand(1, 1, 5, 6, 7)
    p = t + 0.5
    weights = L.LossWeights({"l1": 1.0, "mse": 0.0})
    loss = L.CompositeLoss(weights, charbonnier_eps=1e-3)
    assert loss.weights is weights
    total, terms = loss(p, t)
    assert set(terms) == {"l1"} and total.item() == pytest.approx(0.5, abs=1e-6)
    weights.set("mse", 2.0, step=1)
    total, terms = loss(p, t)
    assert set(terms) == {"l1", "mse"} and total.item() == pytest.approx(0.5 + 2 * 0.25, abs=1e-6)
    th = threading.Thread(target=weights.set, args=("l1", 0.0), kwargs={"step": 2})
    th.start()
    th.join()
    total, terms = loss(p, t)
    assert set(terms) == {"mse"} and total.item() == pytest.approx(0.5, abs=1e-6)


def test_composite_charbonnier_eps_and_all_zero():
    t = _rand(1, 1, 4, 4, 4)
    _, terms = L.CompositeLoss({"charbonnier": 1.0}, charbonnier_eps=0.5)(t, t)
    assert terms["charbonnier"] == pytest.approx(0.5, rel=1e-5)
    p = t.clone().requires_grad_()
    total, terms = L.CompositeLoss({"l1": 0.0})(p, t)
    assert terms == {} and total.item() == 0.0
    total.backward()
    assert p.grad is not None and (p.grad == 0).all()
