"""The default SR networks shipped in the package: small, loadable, documented, and better than tricubic."""

import numpy as np
import pytest

from workbench.tasks.sr.predictor import WEIGHTS_DIR, SRPredictor, default_checkpoint
from workbench.training.checkpoint import load_checkpoint


@pytest.mark.parametrize("scale", [2, 4])
def test_shipped_checkpoint_is_small_and_says_how_it_was_made(scale):
    path = default_checkpoint(scale)
    assert path.parent == WEIGHTS_DIR and path.stat().st_size < 5 * 2**20
    ckpt = load_checkpoint(path)
    meta = ckpt["task_meta"]
    assert meta["task"] == "sr" and meta["scale"] == [scale] * 3
    assert meta["trained_by"] == f"python scripts/train_sr_weights.py --scale {scale}"
    assert "optimizer_state" not in ckpt  # weights only: a few MB
    assert SRPredictor.default(scale).scale == (scale,) * 3


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
