"""Super-resolution metrics (workbench.tasks.sr.metrics): segmentation, porosity, S2, evaluate_sr."""

import itertools

import numpy as np
import pytest
from scipy import ndimage

from workbench.io_utils import InputError
from workbench.tasks.sr.metrics import evaluate_sr, porosity, segment_three_phase, two_point_correlation
from workbench.tasks.sr.soil import simulate_soil


@pytest.fixture(scope="module")
def soil():
    return simulate_soil((40, 40, 40), seed=2)


def _brute_force_s2(b, max_r):
    """Mean over displacements d with round(|d|) == r of the fraction of in-volume pairs both in b."""
    sums, counts = np.zeros(max_r + 1), np.zeros(max_r + 1)
    for d in itertools.product(range(-max_r, max_r + 1), repeat=3):
        r = int(np.rint(np.linalg.norm(d)))
        if r > max_r:
            continue
        src = tuple(slice(max(0, -k), n - max(0, k)) for k, n in zip(d, b.shape))
        dst = tuple(slice(max(0, k), n - max(0, -k)) for k, n in zip(d, b.shape))
        sums[r] += (b[src] & b[dst]).mean()
        counts[r] += 1
    return sums / counts


# ----------------------------------------------------------------------------- segmentation
def test_multi_otsu_segmentation_recovers_three_levels():
    truth = np.random.default_rng(0).integers(0, 3, (20, 21, 22)).astype(np.uint8)
    vol = np.array([0.1, 0.45, 0.8], np.float32)[truth] + np.random.default_rng(1).normal(0, 0.03, truth.shape)
    labels, (t0, t1) = segment_three_phase(vol)
    assert labels.dtype == np.uint8 and 0.1 < t0 < 0.45 < t1 < 0.8
    assert np.mean(labels == truth) > 0.99
    assert porosity(labels) == pytest.approx(np.mean(truth == 0), abs=0.01)


def test_given_thresholds_are_used_as_is():
    vol = np.linspace(0, 1, 1000, dtype=np.float32).reshape(10, 10, 10)
    labels, th = segment_three_phase(vol, (0.25, 0.5))
    assert th == (0.25, 0.5) and all(isinstance(t, float) for t in th)
    assert porosity(labels) == pytest.approx(0.25, abs=0.002) and np.mean(labels == 2) == pytest.approx(0.5, abs=0.002)
    with pytest.raises(InputError, match="increasing"):
        segment_three_phase(vol, (0.5, 0.25))
    with pytest.raises(InputError, match="3 phases"):
        segment_three_phase(np.zeros((4, 4, 4)))


def test_porosity_is_the_fraction_of_label_zero():
    labels = np.ones((4, 5, 6), np.uint8)
    labels[:1] = 0
    labels[-1] = 2
    assert porosity(labels) == pytest.approx(0.25)


# ----------------------------------------------------------------------------- two-point correlation
def test_s2_matches_brute_force_on_a_tiny_volume():
    b = np.random.default_rng(3).random((6, 6, 6)) > 0.55
    s2 = two_point_correlation(b, 4)
    assert s2.shape == (5,) and s2[0] == pytest.approx(b.mean(), rel=1e-12)
    np.testing.assert_allclose(s2, _brute_force_s2(b, 4), rtol=1e-9, atol=1e-12)


def test_s2_matches_brute_force_on_an_odd_box():
    b = np.random.default_rng(4).random((5, 7, 6)) > 0.4
    np.testing.assert_allclose(two_point_correlation(b, 3), _brute_force_s2(b, 3), rtol=1e-9, atol=1e-12)


def test_s2_starts_at_the_fraction_and_decays_to_its_square():
    field = ndimage.gaussian_filter(np.random.default_rng(0).standard_normal((40, 40, 40)), 2.0, mode="wrap")
    b = field < np.quantile(field, 0.3)  # correlated phase, fraction 0.3
    s2 = two_point_correlation(b)
    f = b.mean()
    assert len(s2) == 40 // 4 + 1 and s2[0] == pytest.approx(f)
    assert np.all(np.diff(s2[:6]) < 0)  # decays over the correlation length
    assert abs(s2[-1] - f * f) < 0.02 and s2[1] > f * f + 0.1
    iid = np.random.default_rng(1).random((30, 30, 30)) < 0.4  # uncorrelated: S2(r >= 1) = f^2
    assert np.allclose(two_point_correlation(iid)[1:], iid.mean() ** 2, atol=0.005)


def test_s2_rejects_bad_input():
    with pytest.raises(InputError, match="max_r"):
        two_point_correlation(np.ones((6, 6, 6), bool), 6)
    with pytest.raises(InputError, match="2D or 3D"):
        two_point_correlation(np.ones((6,), bool))


def test_s2_in_2d_matches_brute_force():
    b = np.random.default_rng(4).random((9, 11)) < 0.4
    s2 = two_point_correlation(b, 3)
    for r in range(4):
        vals = []
        for dx in range(-r - 1, r + 2):
            for dy in range(-r - 1, r + 2):
                if round(np.hypot(dx, dy)) != r:
                    continue
                a = b[max(dx, 0):9 + min(dx, 0), max(dy, 0):11 + min(dy, 0)]
                c = b[max(-dx, 0):9 + min(-dx, 0), max(-dy, 0):11 + min(-dy, 0)]
                vals.append(np.mean(a & c))
        assert s2[r] == pytest.approx(np.mean(vals), rel=1e-9)


def test_pore_size_curve_of_a_disc_and_slice_metrics():
    from workbench.tasks.sr.metrics import evaluate_slices, pore_size_curve

    yy, xx = np.mgrid[:40, :40]
    disc = (yy - 20) ** 2 + (xx - 20) ** 2 <= 36  # radius 6
    curve = pore_size_curve(disc, 8)
    assert curve[5] == pytest.approx(1.0) and curve[:6].min() > 0.8 and curve[6] == curve[7] == 0.0
    rng = np.random.default_rng(0)
    hr = np.stack([disc * 1.0 + 2.0 * (rng.random((40, 40)) < 0.3) for _ in range(3)], axis=-1).astype(np.float32)
    perfect = evaluate_slices(hr, hr)
    assert perfect["ssim"] == pytest.approx(1.0) and perfect["porosity_error"] == 0 and perfect["psd_distance"] == 0
    from scipy import ndimage

    blurred = evaluate_slices(ndimage.gaussian_filter(hr, (2, 2, 0)), hr)
    assert blurred["psnr"] < 40 and blurred["tpc_error"] > 0 and blurred["ssim"] < 1


# ----------------------------------------------------------------------------- evaluate_sr
def test_identical_volumes_are_perfect(soil):
    hr = soil[0]
    m = evaluate_sr(hr, hr, "soil")
    assert m["psnr"] == float("inf") and m["ssim"] == pytest.approx(1.0)
    assert m["porosity_error"] == 0.0 and m["tpc_error"] == 0.0 and m["phase_accuracy"] == 1.0


def test_soil_keys_only_for_kind_soil(soil):
    hr = soil[0]
    sr = hr + np.float32(0.01)
    assert set(evaluate_sr(sr, hr)) == {"psnr", "ssim"}
    assert set(evaluate_sr(sr, hr, "soil")) == {"psnr", "ssim", "porosity_error", "tpc_error", "phase_accuracy"}
    assert all(isinstance(v, float) for v in evaluate_sr(sr, hr, "soil").values())


def test_blur_costs_structure_more_than_mild_noise(soil):
    hr = soil[0]
    blurred = ndimage.gaussian_filter(hr, 1.5)
    noisy = hr + np.random.default_rng(0).normal(0, 0.02, hr.shape).astype(np.float32)
    mb, mn = evaluate_sr(blurred, hr, "soil"), evaluate_sr(noisy, hr, "soil")
    assert mb["tpc_error"] > mn["tpc_error"] and mb["ssim"] < mn["ssim"]
    assert mb["phase_accuracy"] < mn["phase_accuracy"]


def test_sr_is_segmented_with_the_reference_thresholds(soil):
    hr = soil[0]
    darker = hr - np.float32(0.08)  # own multi-Otsu thresholds would follow the shift and hide it
    m = evaluate_sr(darker, hr, "soil")
    labels, th = segment_three_phase(hr)
    expected = np.mean(segment_three_phase(darker, th)[0] == 0) - porosity(labels)
    assert expected > 0.03 and m["porosity_error"] == pytest.approx(expected)


def test_psnr_uses_the_reference_range_or_one_when_flat():
    hr = np.zeros((12, 12, 12), np.float32)
    assert evaluate_sr(hr + np.float32(0.1), hr)["psnr"] == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01)
    hr2 = np.zeros((12, 12, 12), np.float32)
    hr2[6:] = 2.0  # range 2
    assert evaluate_sr(hr2 + np.float32(0.1), hr2)["psnr"] == pytest.approx(10 * np.log10(4 / 0.01), abs=1e-3)


def test_bad_kind_and_shape_raise_input_error(soil):
    hr = soil[0]
    with pytest.raises(InputError, match="'ct'|ct, soil") as exc:
        evaluate_sr(hr, hr, "mri")
    assert "ct" in str(exc.value) and "soil" in str(exc.value)
    with pytest.raises(InputError) as exc:
        evaluate_sr(hr[:-1], hr)
    assert str(hr[:-1].shape) in str(exc.value) and str(hr.shape) in str(exc.value)
    with pytest.raises(InputError, match="NaN"):
        evaluate_sr(np.full_like(hr, np.nan), hr)
