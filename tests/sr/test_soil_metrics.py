"""The soil simulator and the SR metrics (resampling, degradation and the chest CT: their own test files)."""

import numpy as np
import pytest
from scipy import ndimage

from workbench.io_utils import InputError
from workbench.tasks.sr.metrics import evaluate_sr, two_point_correlation
from workbench.tasks.sr.soil import simulate_soil


# ----------------------------------------------------------------------------- soil
def test_soil_is_seeded_three_phase_and_hits_its_porosity():
    a, la = simulate_soil((33, 34, 35), seed=3, porosity=0.3)
    b, lb = simulate_soil((33, 34, 35), seed=3, porosity=0.3)
    c, _ = simulate_soil((33, 34, 35), seed=4, porosity=0.3)
    assert a.shape == (33, 34, 35) and np.array_equal(a, b) and np.array_equal(la, lb) and not np.array_equal(a, c)
    assert set(np.unique(la)) == {0, 1, 2} and abs((la == 0).mean() - 0.3) < 0.03
    means = [a[la == k].mean() for k in range(3)]
    assert means[0] < means[1] < means[2]


def test_soil_seeds_span_a_range_of_porosity():
    por = [(simulate_soil((24, 24, 24), seed=s)[1] == 0).mean() for s in range(8)]
    assert min(por) < 0.25 and max(por) > 0.35


# ----------------------------------------------------------------------------- metrics
def test_two_point_correlation_matches_brute_force():
    b = np.random.default_rng(0).random((6, 6, 6)) > 0.5
    s2 = two_point_correlation(b, 1)
    assert s2[0] == pytest.approx(b.mean())
    import itertools

    vals = []  # every displacement d with round(|d|) == 1, averaged (what the radial bin holds)
    for d in itertools.product(range(-1, 2), repeat=3):
        if round(float(np.linalg.norm(d))) != 1:
            continue
        src = tuple(slice(max(0, -k), 6 - max(0, k)) for k in d)
        dst = tuple(slice(max(0, k), 6 - max(0, -k)) for k in d)
        vals.append((b[src] & b[dst]).mean())
    assert s2[1] == pytest.approx(np.mean(vals), rel=1e-9)


def test_structure_metrics_punish_blur_that_psnr_forgives():
    hr, _ = simulate_soil((40, 40, 40), seed=2)
    blurred = ndimage.gaussian_filter(hr, 1.5)
    noisy = hr + np.random.default_rng(0).normal(0, 0.02, hr.shape).astype(np.float32)
    mb, mn = evaluate_sr(blurred, hr, "soil"), evaluate_sr(noisy, hr, "soil")
    assert mb["tpc_error"] > mn["tpc_error"] and mb["ssim"] < mn["ssim"]
    assert evaluate_sr(hr, hr, "soil")["porosity_error"] == 0.0
    assert set(evaluate_sr(hr, hr)) == {"psnr", "ssim"}
    with pytest.raises(InputError, match="known kinds"):
        evaluate_sr(hr, hr, "mri")
    with pytest.raises(InputError, match="same grid"):
        evaluate_sr(hr[:-1], hr)
