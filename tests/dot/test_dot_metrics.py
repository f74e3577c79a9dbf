"""DOT metrics (workbench.tasks.dot.metrics): image errors, contrast recovery, localisation, cross-talk."""

import json
import math

import numpy as np
import pytest

from workbench.io_utils import InputError
from workbench.tasks.dot.metrics import evaluate_dot, format_table, summarize

N = 20
BG = (0.01, 1.0)
VOXEL_MM = 2.0
GRID = np.indices((N, N, N)).astype(np.float64)


def ball(centre, radius):
    return sum((g - c) ** 2 for g, c in zip(GRID, centre)) <= radius ** 2


BODY = ball((9.5, 9.5, 9.5), 9.5)


def flat():
    vol = np.empty((2, N, N, N))
    vol[0], vol[1] = BG
    return vol


def with_inclusion(vol, mask, mua=None, mus=None):
    vol = vol.copy()
    if mua is not None:
        vol[0][mask] = mua
    if mus is not None:
        vol[1][mask] = mus
    return vol


def labels(*masks):
    out = np.zeros((N, N, N), np.int32)
    for k, m in enumerate(masks, start=1):
        out[m] = k
    return out


INC = ball((9, 10, 10), 3)                       # a "both" inclusion, well inside the body
REF = with_inclusion(flat(), INC, mua=0.03, mus=2.0)
LAB = labels(INC)


def evaluate(result, reference=REF, inclusions=LAB, body=BODY):
    return evaluate_dot(result, reference, body, inclusions=inclusions, background=BG, voxel_mm=VOXEL_MM)


def test_perfect_reconstruction():
    a_only, s_only, both = ball((5, 9, 9), 2.5), ball((14, 9, 9), 2.5), ball((9, 14, 10), 2.5)
    ref = with_inclusion(with_inclusion(with_inclusion(flat(), a_only, mua=0.025), s_only, mus=0.5),
                         both, mua=0.02, mus=1.6)
    m = evaluate(ref.copy(), ref, labels(a_only, s_only, both))
    for c in ("mua", "mus"):
        assert m[f"rmse_{c}"] == 0.0
        assert m[f"psnr_{c}"] == math.inf
        assert m[f"ssim_{c}"] == pytest.approx(1.0, abs=1e-6)
        assert m[f"contrast_{c}"] == pytest.approx(1.0)
        assert m[f"detected_{c}"] == 1.0
        assert m[f"loc_error_{c}"] == pytest.approx(0.0, abs=1e-9)
        assert m[f"dice_{c}"] == pytest.approx(1.0)
    assert m["crosstalk_mua_to_mus"] == 0.0
    assert m["crosstalk_mus_to_mua"] == 0.0
    assert all(type(v) is float for v in m.values())
    json.dumps(m)  # NaN / inf are written as NaN / Infinity


def test_shifted_inclusion():
    shift = 3
    res = with_inclusion(flat(), ball((9 + shift, 10, 10), 3), mua=0.03, mus=2.0)
    m = evaluate(res)
    for c in ("mua", "mus"):
        assert m[f"detected_{c}"] == 1.0
        assert m[f"loc_error_{c}"] == pytest.approx(shift * VOXEL_MM, abs=0.5 * VOXEL_MM)
        assert 0.0 < m[f"dice_{c}"] < 1.0
        assert m[f"rmse_{c}"] > 0
        assert m[f"ssim_{c}"] < 1.0


def test_negative_contrast_is_localised():
    ref = with_inclusion(flat(), INC, mus=0.6)                       # mu_s'-only, darker than background
    res = with_inclusion(flat(), ball((9, 12, 10), 3), mus=0.7)
    m = evaluate(res, ref)
    assert m["detected_mus"] == 1.0
    assert m["loc_error_mus"] == pytest.approx(2 * VOXEL_MM, abs=1e-9)
    assert m["contrast_mus"] == pytest.approx(np.mean(res[1][INC] - 1.0) / (0.6 - 1.0))
    assert math.isnan(m["contrast_mua"]) and math.isnan(m["loc_error_mua"]) and math.isnan(m["dice_mua"])


def test_half_contrast():
    res = flat() + 0.5 * (REF - flat())
    m = evaluate(res)
    for c in ("mua", "mus"):
        assert m[f"contrast_{c}"] == pytest.approx(0.5)
        assert m[f"loc_error_{c}"] == pytest.approx(0.0, abs=1e-9)
        assert m[f"dice_{c}"] == pytest.approx(1.0)


def test_flat_reconstruction_is_not_detected():
    m = evaluate(flat())
    for c in ("mua", "mus"):
        assert m[f"detected_{c}"] == 0.0
        assert math.isnan(m[f"loc_error_{c}"])
        assert m[f"dice_{c}"] == 0.0
        assert m[f"contrast_{c}"] == 0.0
    # float32 round-off of the background is not a detection either
    assert evaluate(flat().astype(np.float32))["detected_mua"] == 0.0


def test_component_picking():
    # an artefact brighter than the (half-recovered) inclusion: the component on the inclusion is scored
    artefact = ball((9, 10, 16), 1.5)
    res = with_inclusion(with_inclusion(flat(), INC, mua=0.02), artefact, mua=0.026)
    m = evaluate(res)
    assert m["loc_error_mua"] == pytest.approx(0.0, abs=1e-9)
    assert m["dice_mua"] == pytest.approx(2 * INC.sum() / (2 * INC.sum() + artefact.sum()))
    # no component overlaps: the nearest one is scored
    res = with_inclusion(with_inclusion(flat(), ball((15, 10, 10), 2), mua=0.03), ball((3, 10, 10), 2), mua=0.03)
    assert evaluate(res)["loc_error_mua"] == pytest.approx(6 * VOXEL_MM)


def test_crosstalk_exact():
    ref = with_inclusion(flat(), INC, mua=0.02)                      # mu_a-only: +100 % relative change
    res = with_inclusion(flat(), INC, mua=0.018)                     # 80 % recovered
    leak = np.where(GRID[0] % 2 == 0, 1.4, 0.6)                     # |mu_s' - 1| / 1 = 0.4 everywhere
    res[1][INC] = leak[INC]
    m = evaluate(res, ref)
    rel_this = np.mean(np.abs(res[0][INC] - BG[0])) / BG[0]
    rel_other = np.mean(np.abs(res[1][INC] - BG[1])) / BG[1]
    assert rel_this == pytest.approx(0.8) and rel_other == pytest.approx(0.4)
    assert m["crosstalk_mua_to_mus"] == pytest.approx(rel_other / rel_this)
    assert m["crosstalk_mua_to_mus"] == pytest.approx(0.5)
    assert math.isnan(m["crosstalk_mus_to_mua"])                     # no mu_s'-only inclusion
    # the mu_s' reference is constant: no PSNR / SSIM range and no contrast metrics there
    assert math.isnan(m["psnr_mus"]) and math.isnan(m["ssim_mus"]) and math.isnan(m["contrast_mus"])
    assert m["rmse_mus"] == pytest.approx(np.sqrt(0.16 * INC.sum() / BODY.sum()))


def test_without_inclusions():
    m = evaluate_dot(REF.copy(), REF, BODY)
    assert m["rmse_mua"] == 0.0
    for key in ("contrast", "detected", "loc_error", "dice"):
        assert math.isnan(m[f"{key}_mua"]) and math.isnan(m[f"{key}_mus"])
    assert math.isnan(m["crosstalk_mua_to_mus"]) and math.isnan(m["crosstalk_mus_to_mua"])


def test_psnr_range_and_rmse():
    rng = np.random.default_rng(0)
    res = REF + rng.normal(0, [[[[0.002]]], [[[0.1]]]], REF.shape)
    m = evaluate(res)
    for c, name in enumerate(("mua", "mus")):
        err = np.sqrt(np.mean((res[c][BODY] - REF[c][BODY]) ** 2))
        rng_ref = REF[c][BODY].max() - REF[c][BODY].min()
        assert m[f"rmse_{name}"] == pytest.approx(err)
        assert m[f"psnr_{name}"] == pytest.approx(20 * np.log10(rng_ref / err))
        assert 0.0 < m[f"ssim_{name}"] < 1.0


def test_voxels_outside_body_are_ignored():
    rng = np.random.default_rng(1)
    res = with_inclusion(flat(), ball((10, 11, 10), 3), mua=0.022, mus=1.7) + rng.normal(0, 0.001, REF.shape)
    base = evaluate(res)
    out = ~BODY
    res2, ref2, lab2 = res.copy(), REF.copy(), LAB.copy()
    res2[:, out] = rng.uniform(-5, 5, (2, out.sum()))
    res2[0, 0, 0, 0] = np.nan
    ref2[:, out] = rng.uniform(-5, 5, (2, out.sum()))
    lab2[0, 0, :] = 2                                               # a label outside the body
    assert out[0, 0, :].all()
    np.testing.assert_equal(evaluate(res2, ref2, lab2), base)


def test_bad_input():
    with pytest.raises(InputError):
        evaluate(REF[:, :-1])
    with pytest.raises(InputError):
        evaluate(REF, body=np.zeros((N, N, N), bool))
    bad = REF.copy()
    bad[0, 10, 10, 10] = np.nan
    with pytest.raises(InputError):
        evaluate(bad)
    with pytest.raises(InputError):
        evaluate_dot(REF, REF, BODY, background=(0.0, 1.0))


def test_summarize_ignores_nan():
    s = summarize([{"a": 1.0, "b": math.nan}, {"a": 3.0, "b": 2.0}, {"a": math.nan}])
    assert s["a"] == (2.0, 1.0, 2)
    assert s["b"] == (2.0, 0.0, 1)
    s = summarize([{"c": math.nan}])
    assert math.isnan(s["c"][0]) and math.isnan(s["c"][1]) and s["c"][2] == 0


def test_format_table():
    rows = {"born": summarize([{"rmse_mua": 0.002, "dice_mua": 0.5}, {"rmse_mua": 0.004, "dice_mua": 0.7}]),
            "net": summarize([{"rmse_mua": 0.001}])}
    text = format_table(rows, ["rmse_mua", "dice_mua"])
    lines = text.splitlines()
    assert len(lines) == 4 and lines[1].startswith("|-")
    assert "method" in lines[0] and "rmse_mua" in lines[0] and "dice_mua" in lines[0]
    assert "0.003 ± 0.001" in lines[2] and "0.6 ± 0.1" in lines[2]
    assert "n/a" in lines[3]
    assert len({len(line) for line in lines}) == 1                  # padded columns
