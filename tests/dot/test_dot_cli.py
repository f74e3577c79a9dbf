"""The `dot` command line as the issue writes it (grid 16), its files, and bad input (exit 2, nothing written)."""

import json

import nibabel as nib
import numpy as np
import pytest

from workbench.cli import main
from workbench.config import save_config
from workbench.tasks import get_task
from workbench.tasks.dot.data import FORMAT, load_dataset, load_measurements, save_measurements
from workbench.tasks.dot.physics import default_geometry


def run(*argv):
    return main(["--quiet", *map(str, argv)])


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    d = tmp_path_factory.mktemp("dot") / "data"
    assert run("dot", "simulate", d, "--n", "6", "--grid", "16", "--seed", "3", "--workers", "1") == 0
    return d


@pytest.fixture(scope="module")
def checkpoint(cases, tmp_path_factory):
    cfg = get_task("dot").default_config(grid=16)
    cfg.train.val_every = cfg.train.checkpoint_every = 2
    cfg.data.batch_size = 2
    path = tmp_path_factory.mktemp("cfg") / "dot.yaml"
    save_config(cfg, path)
    run_dir = tmp_path_factory.mktemp("run")
    assert run("dot", "train", cases, "--out", run_dir, "--config", path, "--steps", "4") == 0
    return run_dir / "best.pt"


def test_simulate_writes_documented_case_files(cases):
    assert sorted(p.name for p in (cases / "case_000").iterdir()) == [
        "labels.nii.gz", "measurements.npz", "mu.nii.gz", "params.json"]
    g = default_geometry(16)
    img = nib.load(cases / "case_000" / "mu.nii.gz")
    assert img.shape == (16, 16, 16, 2) and np.allclose(img.affine, g.affine())
    mu = np.asarray(img.dataobj)
    body = g.body_mask
    assert 0.005 < mu[..., 0][body].min() and mu[..., 0][body].max() < 0.04     # mu_a (1/mm)
    assert 0.4 < mu[..., 1][body].min() and mu[..., 1][body].max() < 1.8       # mu_s' (1/mm)
    z = np.load(cases / "case_000" / "measurements.npz")
    assert str(z["format"]) == FORMAT and list(z["frequencies_hz"]) == [0.0, 140e6]
    assert z["amplitude"].shape == (2, 16, 16) and (z["amplitude"] > 0).all()
    assert np.allclose(z["sources_mm"], g.sources_mm)
    params = json.loads((cases / "case_000" / "params.json").read_text())
    assert 1 <= len(params["inclusions"]) <= 3
    assert all(2.5 <= inc["radius_mm"] <= 7.5 for inc in params["inclusions"])
    ds = load_dataset(cases)
    assert len(ds) == 6 and (cases / "dataset.npz").is_file() and ds.mu.shape == (6, 2, 16, 16, 16)


def test_simulate_resumes_and_refuses_another_geometry(cases, capsys):
    before = (cases / "case_000" / "mu.nii.gz").stat().st_mtime_ns
    assert run("dot", "simulate", cases, "--n", "7", "--grid", "16", "--seed", "3", "--workers", "1") == 0
    assert (cases / "case_006").is_dir() and (cases / "case_000" / "mu.nii.gz").stat().st_mtime_ns == before
    assert run("dot", "simulate", cases, "--n", "7", "--grid", "24", "--seed", "3") == 2
    assert "another geometry or seed" in capsys.readouterr().err
    assert not (cases / "case_007").exists()


def test_train_predict_evaluate(cases, checkpoint, tmp_path, capsys):
    out = tmp_path / "mu.nii.gz"
    meas = cases / "case_000" / "measurements.npz"
    assert run("dot", "predict", meas, "-o", out, "--checkpoint", checkpoint) == 0
    img = nib.load(out)
    assert img.shape == (16, 16, 16, 2) and np.allclose(img.affine, default_geometry(16).affine())
    mu = np.asarray(img.dataobj)
    assert (mu[..., 0] > 0).all() and (mu[..., 1] > 0).all()
    info = json.loads((tmp_path / "mu.json").read_text())
    assert info["pairs_used"] == 256 and info["checkpoint"] == str(checkpoint)
    capsys.readouterr()
    assert run("dot", "evaluate", out, "--reference", cases / "case_000" / "mu.nii.gz", "--json") == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["rmse_mua"] > 0 and metrics["rmse_mus"] > 0 and -1 <= metrics["ssim_mua"] <= 1


def test_tikhonov_baseline_finds_the_inclusions(cases, tmp_path, capsys):
    out = tmp_path / "tik.nii.gz"
    assert run("dot", "baseline", "tikhonov", cases / "case_001" / "measurements.npz", "-o", out) == 0
    capsys.readouterr()
    assert run("dot", "evaluate", out, "--reference", cases / "case_001" / "mu.nii.gz", "--json") == 0
    tik = json.loads(capsys.readouterr().out)
    g = default_geometry(16)
    ref = np.moveaxis(np.asarray(nib.load(cases / "case_001" / "mu.nii.gz").dataobj), -1, 0)
    rec = np.moveaxis(np.asarray(nib.load(out).dataobj), -1, 0)
    labels = np.asarray(nib.load(cases / "case_001" / "labels.nii.gz").dataobj) > 0
    for ch in (0, 1):   # the deviation inside the inclusions follows the truth (linear, 4 mm voxels: blurred)
        true_dev = (ref[ch] - g.background[ch])[labels]
        rec_dev = (rec[ch] - g.background[ch])[labels]
        if np.abs(true_dev).mean() > 0.1 * g.background[ch]:
            assert np.sign(rec_dev.mean()) == np.sign(true_dev.mean())
    assert np.isfinite(tik["rmse_mua"]) and np.isfinite(tik["ssim_mus"])




@pytest.mark.parametrize("change, message", [
    ({"amplitude": "negative"}, "zero or negative amplitudes"),
    ({"amplitude": "nan"}, "NaN or infinite"),
    ({"frequencies_hz": "cw_only"}, "lack the 140 MHz channel"),
    ({"sources_mm": "moved"}, "positions differ"),
    ({"missing": "phase_rad"}, "lacks phase_rad"),
])
def test_bad_measurements_exit_2_and_write_nothing(cases, checkpoint, tmp_path, capsys, change, message):
    src = cases / "case_002" / "measurements.npz"
    z = dict(np.load(src))
    key, how = next(iter(change.items()))
    if how == "negative":
        z["amplitude"] = z["amplitude"].copy()
        z["amplitude"][1, 3, 4] = -1.0
    elif how == "nan":
        z["amplitude"] = z["amplitude"].copy()
        z["amplitude"][0, 0, 0] = np.nan
    elif how == "cw_only":
        z["frequencies_hz"] = np.array([0.0, 70e6])
    elif how == "moved":
        z["sources_mm"] = z["sources_mm"] + 3.0
    elif key == "missing":
        del z[how]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **z)
    out = tmp_path / "out.nii.gz"
    capsys.readouterr()
    assert run("dot", "predict", bad, "-o", out, "--checkpoint", checkpoint) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists() and not (tmp_path / "out.json").exists()


def test_masked_pairs_and_wrong_geometry(cases, checkpoint, tmp_path, capsys):
    meas = load_measurements(cases / "case_003" / "measurements.npz")
    g = default_geometry(16)
    mask = np.random.default_rng(0).random((16, 16)) < 0.5
    data = meas.data.copy()
    data[:, ~mask] = np.nan     # unmeasured pairs may hold NaN when the mask says so
    path = save_measurements(tmp_path / "half.npz", data, g, mask=mask)
    out = tmp_path / "half.nii.gz"
    assert run("dot", "predict", path, "-o", out, "--checkpoint", checkpoint) == 0
    assert json.loads((tmp_path / "half.json").read_text())["pairs_used"] == int(mask.sum())
    g24 = default_geometry(24)
    other = save_measurements(tmp_path / "g24.npz", np.ones((2, 20, 16), complex), g24)
    z = dict(np.load(other))
    z["sources_mm"] = np.zeros((20, 3))
    z["amplitude"] = np.ones((2, 20, 16))
    z["phase_rad"] = np.zeros((2, 20, 16))
    np.savez(other, **z)
    capsys.readouterr()
    assert run("dot", "predict", other, "-o", tmp_path / "x.nii.gz", "--checkpoint", checkpoint) == 2
    assert "20 sources x 16 detectors" in capsys.readouterr().err


def test_output_may_not_be_an_input_and_checkpoint_of_another_task(cases, tmp_path, capsys):
    meas = cases / "case_000" / "measurements.npz"
    assert run("dot", "predict", meas, "-o", meas) == 2
    assert np.load(meas)["amplitude"].shape == (2, 16, 16)
    from workbench.tasks.sr.predictor import default_checkpoint

    capsys.readouterr()
    assert run("dot", "predict", meas, "-o", tmp_path / "o.nii.gz", "--checkpoint", default_checkpoint(4)) == 2
    assert "not dot" in capsys.readouterr().err


def test_config_lists_the_seed_settings(capsys):
    assert run("config", "--task", "dot") == 0
    text = capsys.readouterr().out
    for needle in ("dot_net", "betas", "0.95", "warmup_fraction: 0.2", "rmse: 0.7", "ssim: 0.3",
                   "channel_weights"):
        assert needle in text


def test_network_reading_tikhonov_reconstructions_trains_and_predicts(cases, tmp_path):
    """`options.tikhonov_lambdas` gives the network linear reconstructions as input; the checkpoint records how
    to rebuild that operator, and `predict` rebuilds it: the loaded network gives the trained network's output."""
    import torch

    from workbench.tasks.dot import workflow
    from workbench.tasks.dot.training import features, reference_data

    cfg = get_task("dot").default_config(grid=16, tikhonov_lambdas=(1e-4, 1e-2))
    cfg.train.val_every = cfg.train.checkpoint_every = 2
    cfg.data.batch_size = 2
    path = tmp_path / "dot.yaml"
    save_config(cfg, path)
    run_dir = tmp_path / "run"
    assert run("dot", "train", cases, "--out", run_dir, "--config", path, "--steps", "2") == 0
    pred = workflow.DotPredictor.from_checkpoint(run_dir / "best.pt")
    assert pred.model.tikhonov_channels == 4 and pred.model.inverse is not None
    trained = workflow.make_trainer(load_dataset(cases), None, cfg).model
    trained.load_state_dict(pred.model.state_dict())
    data = load_measurements(cases / "case_001" / "measurements.npz").data
    x = torch.from_numpy(features(data, reference_data(pred.geometry), pred.scales))[None]
    with torch.no_grad():
        torch.testing.assert_close(pred.model.lift(x), trained.eval().lift(x))
        lifted = pred.model.lift(x)[0, -4:]
    assert lifted.abs().amax(dim=(1, 2, 3)).min() > 0          # every linear channel carries the measurements
    out = tmp_path / "mu.nii.gz"
    assert run("dot", "predict", cases / "case_001" / "measurements.npz", "-o", out,
               "--checkpoint", run_dir / "best.pt") == 0
    assert np.isfinite(np.asarray(nib.load(out).dataobj)).all()


def test_inclusion_weight_follows_the_true_inclusions_through_the_rotations(cases):
    """`options.inclusion_weight` weighs the loss per channel: body voxels 1 / (1 + w), inclusion voxels 1, the
    labels turned with the phantom in the quarter-turn augmentation; the inclusion voxels carry more of the loss."""
    import torch

    from workbench.tasks.dot.training import DotSampler, feature_scales

    ds = load_dataset(cases)
    scales = feature_scales(ds, range(len(ds.mu)))
    plain = DotSampler(ds, range(len(ds.mu)), [], scales, sigma_amp=0.0, sigma_phase_deg=0.0,
                       subsample_prob=0.0, subsample_min=1.0)
    weighted = DotSampler(ds, range(len(ds.mu)), [], scales, sigma_amp=0.0, sigma_phase_deg=0.0,
                          subsample_prob=0.0, subsample_min=1.0, inclusion_weight=(0.0, 9.0))
    assert plain.sample(2, torch.Generator().manual_seed(0)).mask.shape[1] == 1
    body = ds.geometry.body_mask
    for seed in range(6):                              # several draws of the quarter turn
        batch = weighted.sample(3, torch.Generator().manual_seed(seed))
        assert batch.mask.shape == (3, 2) + body.shape
        mua_w, mus_w = batch.mask[:, 0].numpy(), batch.mask[:, 1].numpy()
        assert np.array_equal(mua_w, np.broadcast_to(body, mua_w.shape).astype(np.float32))   # w = 0: the body
        assert set(np.unique(mus_w)) <= {0.0, np.float32(0.1), 1.0}
        for b in range(3):
            inside = mus_w[b] == 1.0
            assert inside.any() and not (inside & ~body).any()
            # the weighted voxels are where the (turned) target leaves the background most
            dev = np.abs(batch.target[b].numpy()).max(0)
            assert dev[inside].mean() > 5 * dev[body & ~inside].mean()
