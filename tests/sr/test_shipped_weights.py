"""The default SR networks shipped in the package: small, loadable, documented, and better than tricubic."""

import numpy as np
import pytest

from workbench.tasks.sr.predictor import WEIGHTS_DIR, SRPredictor, default_checkpoint
from workbench.training.checkpoint import load_checkpoint


@pytest.mark.parametrize("scale, inplane", [(2, False), (4, False), (8, True)])
def test_shipped_checkpoint_is_small_and_says_how_it_was_made(scale, inplane):
    path = default_checkpoint(scale, inplane)
    assert path.parent == WEIGHTS_DIR and path.stat().st_size < 5 * 2**20
    ckpt = load_checkpoint(path)
    meta = ckpt["task_meta"]
    expect = (scale, scale, 1) if inplane else (scale,) * 3
    assert meta["task"] == "sr" and meta["scale"] == list(expect)
    assert meta["trained_by"] == f"python scripts/train_sr_weights.py --scale {scale}" + (" --inplane" * inplane)
    assert "optimizer_state" not in ckpt  # weights only: a few MB
    assert SRPredictor.default(scale, inplane=inplane).scale == expect


@pytest.mark.parametrize("scale", [2, 4])
def test_shipped_network_beats_tricubic_on_a_held_out_soil_volume(scale):
    from workbench.tasks.sr.metrics import evaluate_sr
    from workbench.tasks.sr.workflow import sample_case

    case = sample_case("soil", scale=scale, size=32, seed=11)  # soil seed 10011: never trained on
    lr, tri, hr = case["lr"][0], case["tricubic"][0], case["hr"][0]
    sr = SRPredictor.default(scale).predict(lr)
    ours, base = evaluate_sr(sr, hr, "soil"), evaluate_sr(tri, hr, "soil")
    assert ours["psnr"] > base["psnr"] + 1.0 and ours["tpc_error"] < base["tpc_error"]
    assert np.isfinite(sr).all() and sr.dtype == np.float32


def test_shipped_inplane_x8_network_beats_bicubic_on_held_out_slices():
    from workbench.tasks.sr.metrics import evaluate_slices
    from workbench.tasks.sr.workflow import sample_case

    case = sample_case("soil", scale=8, size=64, seed=11, inplane=True, depth=4)
    lr, bic, hr = case["lr"][0], case["tricubic"][0], case["hr"][0]
    sr = SRPredictor.default(8, inplane=True).predict(lr)
    assert sr.shape == hr.shape
    assert evaluate_slices(sr, hr)["psnr"] > evaluate_slices(bic, hr)["psnr"] + 0.3


def test_shipped_sr3_checkpoint_is_small_loads_and_its_mean_beats_bicubic():
    from workbench.tasks.sr.sr3_predictor import SR3Predictor, default_sr3_checkpoint
    from workbench.tasks.sr.workflow import sample_case

    path = default_sr3_checkpoint()
    assert path.parent == WEIGHTS_DIR and path.stat().st_size < 8 * 2**20
    ckpt = load_checkpoint(path)
    assert ckpt["task_meta"]["trained_by"] == "python scripts/train_sr3_weights.py"
    assert ckpt["config"]["model"]["name"] == "sr3" and "optimizer_state" not in ckpt
    sr3 = SR3Predictor.default()
    assert sr3.scale == (8, 8, 1)
    case = sample_case("soil", scale=8, size=64, seed=11, inplane=True, depth=2)
    lr, bic, hr = case["lr"][0], case["tricubic"][0], case["hr"][0]
    res = sr3.predict(lr, steps=10, samples=2, seed=0)
    assert res.mean.shape == hr.shape and np.isfinite(res.mean).all() and res.std.mean() > 0
    assert np.mean((res.mean - hr) ** 2) < np.mean((bic - hr) ** 2)
