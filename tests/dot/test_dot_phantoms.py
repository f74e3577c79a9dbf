"""Phantoms (seeded, within the seed's ranges), the exact quarter-turn augmentation, and the training sampler."""

import numpy as np
import torch

from workbench.tasks.dot.data import DotDataset
from workbench.tasks.dot.phantoms import render_phantom, sample_phantom_params, simulate_phantom
from workbench.tasks.dot.physics import default_geometry, simulate_measurements
from workbench.tasks.dot.training import DotSampler, feature_scales, reference_data


def test_phantoms_are_seeded_and_in_range():
    g = default_geometry(24)
    a, la, pa = simulate_phantom(11, g)
    b, lb, pb = simulate_phantom(11, g)
    assert np.array_equal(a, b) and pa == pb
    c, _, _ = simulate_phantom(12, g)
    assert not np.array_equal(a, c)
    kinds = set()
    for seed in range(40):
        p = sample_phantom_params(np.random.default_rng(seed), g)
        assert 1 <= len(p["inclusions"]) <= 3
        for inc in p["inclusions"]:
            kinds.add(inc["kind"])
            assert 5.0 <= 2 * inc["radius_mm"] <= 15.0
            assert (inc["mua_factor"] == 1.0) == (inc["kind"] == "mus")
            assert (inc["mus_factor"] == 1.0) == (inc["kind"] == "mua")
    assert kinds == {"mua", "mus", "both"}   # the two channels vary separately


def test_render_is_deterministic_in_its_parameters_and_labels_the_inclusions():
    g = default_geometry(24)
    p = sample_phantom_params(np.random.default_rng(5), g, n_inclusions=1)
    p["inclusions"][0].update(kind="both", mua_factor=2.0, mus_factor=0.8)
    mu, labels = render_phantom(p, g)
    inside = labels == 1
    assert inside.sum() > 0 and not (labels[~g.body_mask]).any()
    bg = np.asarray(g.background)[:, None]
    ratio = mu[:, inside] / bg
    assert np.allclose(np.median(ratio, axis=1), (2.0, 0.8), rtol=0.15)   # + the +-10% background waves
    outside = mu[:, g.body_mask & ~inside] / bg
    assert np.percentile(np.abs(outside - 1), 95) <= 0.1 + 1e-6   # waves only (edge voxels: partial volume)


def test_a_quarter_turn_of_the_phantom_permutes_the_optodes_exactly():
    g = default_geometry(16)
    mu, _, _ = simulate_phantom(3, g)
    data = simulate_measurements(g, mu)
    turned = simulate_measurements(g, np.ascontiguousarray(np.rot90(mu, 1, axes=(-3, -2))))
    src, det = g.quarter_turn()
    assert np.allclose(turned, data[:, src][:, :, det], rtol=1e-9)
    assert not np.allclose(turned, data, rtol=1e-3)


def _dataset(n=4):
    g = default_geometry(16)
    mus, labels, data = [], [], []
    for s in range(n):
        mu, lab, _ = simulate_phantom(100 + s, g)
        mus.append(mu), labels.append(lab), data.append(simulate_measurements(g, mu))
    return DotDataset(g, np.stack(data), np.stack(mus), np.stack(labels), [f"c{i}" for i in range(n)])


def test_sampler_is_seeded_noisy_and_subsamples():
    ds = _dataset()
    scales = feature_scales(ds, [0, 1, 2])
    kw = dict(sigma_amp=0.01, sigma_phase_deg=0.5, subsample_prob=1.0, subsample_min=0.5)
    s = DotSampler(ds, [0, 1, 2], [3], scales, **kw)
    b1 = s.sample(4, torch.Generator().manual_seed(7))
    b2 = s.sample(4, torch.Generator().manual_seed(7))
    assert torch.equal(b1.input, b2.input) and torch.equal(b1.target, b2.target)
    assert b1.input.shape == (4, 256, 4) and b1.target.shape == (4, 2, 16, 16, 16)
    present = b1.input[..., 3]
    assert ((present == 0) | (present == 1)).all() and (present.mean(1) < 1).all() and (present.mean(1) >= 0.4).all()
    assert (b1.input[..., :3][present == 0] == 0).all()
    assert torch.equal(b1.mask[0, 0], torch.from_numpy(ds.geometry.body_mask.astype(np.float32)))
    v1, v2 = s.validation_batches(), DotSampler(ds, [0, 1, 2], [3], scales, **kw).validation_batches()
    assert torch.equal(v1[0].input, v2[0].input) and (v1[0].input[..., 3] == 1).all()   # fixed, all pairs


def test_features_are_rytov_data_over_the_scales():
    ds = _dataset(2)
    ref = reference_data(ds.geometry)
    from workbench.tasks.dot.training import features

    x = features(ds.data[0], ref, [1.0, 1.0, 1.0])
    expect = np.log(np.abs(ds.data[0, 0] / ref[0])).ravel()
    assert np.allclose(x[:, 0], expect, atol=1e-6) and (x[:, 3] == 1).all()
    assert np.allclose(features(ref, ref, [1.0, 1.0, 1.0])[:, :3], 0, atol=1e-6)
