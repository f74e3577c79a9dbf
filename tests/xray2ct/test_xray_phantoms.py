"""Chest CT phantoms of the xray2ct task: seeded, JSON parameters, anatomy in place, consistent across grid sizes."""

import copy
import json

import numpy as np
import pytest

from workbench.tasks.xray2ct.phantoms import FOV_MM, HU_RANGE, LABELS, render, sample_params, simulate_phantom

AIR, SOFT, LUNG, BONE, HEART, VESSEL = range(6)


def _centres(n, axis):
    """Voxel centres (mm) along one axis of the default field of view."""
    return (np.arange(n) + 0.5) * FOV_MM[axis] / n - FOV_MM[axis] / 2


@pytest.fixture(scope="module")
def case64():
    return simulate_phantom(5, 64)


@pytest.fixture(scope="module")
def cases48():
    return [simulate_phantom(seed, 48) for seed in range(6)]


def test_seeded_and_deterministic():
    hu, lab, p = simulate_phantom(3, 32)
    hu2, lab2, p2 = simulate_phantom(3, 32)
    assert np.array_equal(hu, hu2) and np.array_equal(lab, lab2) and p == p2
    hu3, _, p3 = simulate_phantom(4, 32)
    assert not np.array_equal(hu, hu3) and p != p3
    hu4, lab4 = render(sample_params(np.random.default_rng(3)), 32)
    assert np.array_equal(hu, hu4) and np.array_equal(lab, lab4)


def test_params_json_round_trip():
    p = sample_params(np.random.default_rng(7))
    q = json.loads(json.dumps(p))
    assert q == p
    for a, b in zip(render(p, 32), render(q, 32)):
        assert np.array_equal(a, b)


def test_shape_dtype_and_hu_range(cases48):
    for hu, lab, _ in cases48:
        assert hu.shape == lab.shape == (48, 48, 48)
        assert hu.dtype == np.float32 and lab.dtype == np.uint8
        assert np.isfinite(hu).all() and HU_RANGE[0] <= hu.min() and hu.max() <= HU_RANGE[1]
        assert set(np.unique(lab)) <= set(LABELS)
        assert hu.min() == -1000.0 and hu.max() > 300.0          # air outside, bone inside
        assert np.all(hu[lab == AIR] < -500) and np.median(hu[lab == BONE]) > 150   # partial volume at edges
        assert np.median(hu[lab == LUNG]) < -700 and abs(np.median(hu[lab == SOFT])) < 100


def test_every_class_present_at_64(case64):
    _, lab, _ = case64
    counts = np.bincount(lab.ravel(), minlength=len(LABELS))
    assert set(np.flatnonzero(counts)) == set(LABELS)
    assert counts[LUNG] > 0.03 * lab.size and counts[SOFT] > counts[BONE] > counts[VESSEL] > 0


def test_anatomy_in_place(case64, cases48):
    for hu, lab, _ in [case64, *cases48]:
        n = lab.shape[0]
        x, y, z = (_centres(n, a) for a in range(3))
        lung = lab == LUNG
        left, right = lung[x > 0].sum(), lung[x < 0].sum()
        assert min(left, right) > 0.3 * lung.sum()                 # one lung each side of the midline
        assert lung[np.abs(x) < 10].sum() < 0.02 * lung.sum()      # separated by the mediastinum
        heart = np.argwhere(lab == HEART)
        hx, hy, hz = heart.mean(0)
        assert x[int(round(hx))] > 0                               # heart left of the midline ...
        assert z[int(round(hz))] < z[np.argwhere(lung)[:, 2].mean().round().astype(int)]   # ... and low
        spine = np.argwhere((lab == BONE) & (np.abs(x) < 20)[:, None, None])
        assert np.median(spine[:, 1]) < hy - 3                     # spine posterior of the heart
        assert z[np.argwhere(lung)[:, 2].max()] > 60               # lung apices near the top


def test_body_inside_field_of_view(case64, cases48):
    for hu, lab, _ in [case64, *cases48]:
        for face in (hu[0], hu[-1], hu[:, 0], hu[:, -1]):
            assert np.all(face == -1000.0)
        for face in (lab[0], lab[-1], lab[:, 0], lab[:, -1]):
            assert np.all(face == AIR)


def test_resolution_consistency():
    p = sample_params(np.random.default_rng(11))
    hu64, _ = render(p, 64)
    hu128, _ = render(p, 128)
    pooled = hu128.reshape(64, 2, 64, 2, 64, 2).mean((1, 3, 5))
    assert np.abs(hu64 - pooled).mean() < 10.0
    moved = copy.deepcopy(p)
    moved["pose"]["shift_mm"][0] += 5.0        # one voxel at 64: the same check would fail
    assert np.abs(render(moved, 64)[0] - pooled).mean() > 20.0
