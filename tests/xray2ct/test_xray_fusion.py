"""The fusion of stage 1 with ridge: the model, its crop sampler, and `train --stage fusion` / `predict --fusion`
on real size-32 cases behind a real (tiny) stage-1 checkpoint and a real linear model."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch

from workbench.cli import main
from workbench.config import save_config
from workbench.models import EstimateFusionNet
from workbench.tasks import get_task
from workbench.tasks.xray2ct.fusion import CropParams, FusionSampler, apply_crop, fusion_config


def run(*argv):
    return main(["--quiet", *map(str, argv)])


# --------------------------------------------------------------------------- model
@pytest.mark.parametrize("shape", [(33, 34, 35), (32, 32, 32), (8, 9, 10)])
def test_untrained_fusion_is_the_mean_of_the_two_estimates_on_odd_shapes(shape):
    torch.manual_seed(0)
    net = EstimateFusionNet(in_channels=3, base_filters=4)
    x = torch.randn(2, 3, *shape)
    with torch.no_grad():
        y = net(x)
    assert y.shape == (2, 1, *shape)
    assert torch.allclose(y, (x[:, :1] + x[:, 1:2]) / 2, atol=1e-6)


def test_fusion_learns_to_trust_the_better_estimate_where_it_is_better():
    """Estimate 0 is exact in the left half, estimate 1 in the right: a few steps move the weight that way."""
    torch.manual_seed(0)
    truth = torch.randn(4, 1, 16, 16, 16)
    noise = lambda: 0.5 * torch.randn_like(truth)  # noqa: E731
    left = torch.zeros_like(truth, dtype=torch.bool)
    left[..., :8, :, :] = True
    e0 = torch.where(left, truth, truth + noise())
    e1 = torch.where(left, truth + noise(), truth)
    side = left.float() * 2 - 1                                   # context channel: which half
    x = torch.cat([e0, e1, side], 1)
    net = EstimateFusionNet(in_channels=3, base_filters=4)
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(net(x), truth)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        w, _ = net.weight_and_residual(x)
        mean_mse = torch.nn.functional.mse_loss((e0 + e1) / 2, truth)
        assert float(w[left].mean()) > 0.7 and float(w[~left].mean()) < 0.3
        assert float(torch.nn.functional.mse_loss(net(x), truth)) < 0.5 * float(mean_mse)


def test_fusion_refuses_a_single_estimate():
    with pytest.raises(ValueError, match="two estimates"):
        EstimateFusionNet(in_channels=1)


# --------------------------------------------------------------------------- sampler
def _sampler(augment=True):
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(5, 3, 12, 13, 14, generator=g)
    target = 2 * torch.randn(5, 1, 12, 13, 14, generator=g)
    return FusionSampler(inputs, target, [0, 1, 2, 3], [4], patch=8, augment=augment), inputs, target


def test_sampler_is_seeded_and_crops_are_a_deterministic_function_of_their_parameters():
    s, inputs, target = _sampler()
    a = s.sample(6, torch.Generator().manual_seed(7))
    b = s.sample(6, torch.Generator().manual_seed(7))
    assert torch.equal(a.input, b.input) and torch.equal(a.target, b.target)
    assert a.input.shape == (6, 3, 8, 8, 8) and a.target.shape == (6, 1, 8, 8, 8)
    assert float(a.target.abs().max()) <= 1.0                       # the HU window [-1000, 1000]
    p = CropParams(2, (1, 2, 3), False)
    x, y = apply_crop(s.inputs, s.target, p, 8)
    assert torch.equal(x, inputs[2, :, 1:9, 2:10, 3:11].half().float())
    xf, yf = apply_crop(s.inputs, s.target, CropParams(2, (1, 2, 3), True), 8)
    assert torch.equal(xf, x.flip(1)) and torch.equal(yf, y.flip(1))       # mirrored along x
    picked = {s.sample_params(torch.Generator().manual_seed(k), 0).flip for k in range(20)}
    assert picked == {True, False}
    assert {_sampler(augment=False)[0].sample_params(torch.Generator().manual_seed(k), 0).flip
            for k in range(20)} == {False}


def test_sampler_validates_on_whole_held_out_volumes():
    s, inputs, _ = _sampler()
    (val,) = s.validation_batches()
    assert val.input.shape == (1, 3, 12, 13, 14)
    assert torch.allclose(val.input, inputs[4:5], atol=1e-2)


# --------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Stage 1 and the linear model fitted on seed-3 cases; the fusion's own cases from seed 4."""
    root = tmp_path_factory.mktemp("fusion")
    for name, seed in (("fit", 3), ("fuse", 4)):
        assert run("xray2ct", "simulate", root / name, "--n", "5", "--size", "32", "--seed", seed, "--hr-size", "0",
                   "--workers", "1") == 0
    cfg = get_task("xray2ct").default_config(real_ct_volumes=0)
    cfg.model.base_filters, cfg.model.options = 4, {"view_channels": 4}
    cfg.train.val_every = cfg.train.checkpoint_every = 2
    cfg.data.batch_size = 2
    save_config(cfg, root / "s1.yaml")
    assert run("xray2ct", "train", root / "fit", "--out", root / "s1", "--config", root / "s1.yaml",
               "--steps", "2") == 0
    assert run("xray2ct", "train", root / "fit", "--out", root / "lin", "--stage", "linear") == 0
    fcfg = fusion_config()
    fcfg.model.base_filters, fcfg.data.patch_size, fcfg.data.batch_size = 4, 16, 2
    fcfg.train.val_every = fcfg.train.checkpoint_every = 2
    save_config(fcfg, root / "fusion.yaml")
    return root


def test_train_fusion_behind_stage1_then_predict_with_it(setup, tmp_path):
    root = setup
    s1, lin = root / "s1" / "best.pt", root / "lin" / "linear.npz"
    assert run("xray2ct", "train", root / "fuse", "--stage", "fusion", "--out", root / "fusion", "--stage1", s1,
               "--linear", lin, "--config", root / "fusion.yaml", "--steps", "3") == 0
    from workbench.training.checkpoint import load_checkpoint

    meta = load_checkpoint(root / "fusion" / "best.pt")["task_meta"]
    assert meta["stage"] == "fusion" and meta["data_seed"] == 4 and meta["stage1"]["path"] == str(s1)
    case = root / "fuse" / "case_000"
    views = ["--ap", case / "xray_ap.nii.gz", "--lateral", case / "xray_lat.nii.gz"]
    assert run("xray2ct", "predict", *views, "-o", tmp_path / "fused.nii.gz", "--checkpoint", s1,
               "--fusion", root / "fusion" / "best.pt", "--linear", lin) == 0
    assert run("xray2ct", "predict", *views, "-o", tmp_path / "plain.nii.gz", "--checkpoint", s1) == 0
    info = json.loads((tmp_path / "fused.json").read_text())
    assert info["fusion"] == str(root / "fusion" / "best.pt")
    assert json.loads((tmp_path / "plain.json").read_text())["fusion"] is None   # none with a user's stage 1
    fused, plain = (np.asarray(nib.load(tmp_path / f).dataobj) for f in ("fused.nii.gz", "plain.nii.gz"))
    assert fused.shape == plain.shape == (32, 32, 32) and np.isfinite(fused).all()
    assert np.abs(fused - plain).mean() > 1.0                         # the ridge half moved it


def test_fusion_refusals_exit_2_and_write_nothing(setup, tmp_path, cli_refuses):
    root = setup
    s1, lin = root / "s1" / "best.pt", root / "lin" / "linear.npz"
    out = tmp_path / "out.nii.gz"

    def refused(*argv, match):
        cli_refuses(out, *argv, match=match)

    # the cases stage 1 was trained on cannot teach the fusion its out-of-sample errors
    refused("xray2ct", "train", root / "fit", "--stage", "fusion", "--out", out, "--stage1", s1, "--linear", lin,
            "--config", root / "fusion.yaml", "--steps", "1", match="another --seed")
    if not (root / "fusion" / "best.pt").is_file():
        pytest.skip("needs the fusion of the test above")
    case = root / "fuse" / "case_000"
    views = ["--ap", case / "xray_ap.nii.gz", "--lateral", case / "xray_lat.nii.gz"]
    fusion = root / "fusion" / "best.pt"
    refused("xray2ct", "predict", *views, "-o", out, "--checkpoint", fusion, match="pass it with --fusion")
    refused("xray2ct", "predict", *views, "-o", out, "--checkpoint", s1, "--fusion", fusion,
            match="trained behind the linear model")                   # the shipped linear model is not its own
    other = tmp_path / "other_s1.pt"
    from workbench.training.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(s1)
    ckpt["model_state"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in ckpt["model_state"].items()}
    save_checkpoint(other, ckpt)                                      # another stage 1 (retrained, say)
    refused("xray2ct", "predict", *views, "-o", out, "--checkpoint", other, "--fusion", fusion, "--linear", lin,
            match="another stage-1 checkpoint")
    refused("xray2ct", "predict", *views, "-o", out, "--checkpoint", s1, "--fusion", s1, "--linear", lin,
            match="not a fusion checkpoint")
    refused("xray2ct", "train", root / "fuse", "--out", out, "--linear", lin, match="--stage fusion")


def test_cases_ridge_cannot_explain_keep_the_network_volume(setup, tmp_path, capsys):
    """The fusion learned its trust in ridge where ridge fits; X-rays ridge re-projects far worse keep stage 1."""
    from workbench.tasks.xray2ct.data import VIEW_FILES, load_views
    from workbench.tasks.xray2ct.workflow import XrayPredictor
    from workbench.training.checkpoint import load_checkpoint, save_checkpoint

    root = setup
    s1, lin, fusion = root / "s1" / "best.pt", root / "lin" / "linear.npz", root / "fusion" / "best.pt"
    if not fusion.is_file():
        pytest.skip("needs the fusion of test_train_fusion_behind_stage1_then_predict_with_it")
    case = root / "fuse" / "case_001"
    xr = load_views(case / VIEW_FILES["ap"], case / VIEW_FILES["lateral"])
    predictor = XrayPredictor.from_checkpoint(s1, fusion=fusion, linear=lin)
    recorded = predictor.fusion.meta["ridge_reprojection_error"]
    assert 0 < recorded["median"] <= recorded["max"]
    fused, info = predictor.predict_with_info(xr)        # one of its own training cases: within the limit
    assert info["fused"] and info["ridge_reprojection_error"] <= recorded["max"] + 1e-4
    plain = predictor.predict(xr, fuse=False)
    assert np.abs(fused - plain).mean() > 1.0
    # the same fusion with a limit below this case's ridge error: the network's volume, unchanged
    ckpt = load_checkpoint(fusion)
    ckpt["task_meta"]["ridge_reprojection_error"]["max"] = info["ridge_reprojection_error"] / 2
    strict = tmp_path / "strict.pt"
    save_checkpoint(strict, ckpt)
    out, info2 = XrayPredictor.from_checkpoint(s1, fusion=strict, linear=lin).predict_with_info(xr)
    assert not info2["fused"] and np.array_equal(out, plain)
    capsys.readouterr()
    assert run("xray2ct", "predict", "--ap", case / VIEW_FILES["ap"], "--lateral", case / VIEW_FILES["lateral"],
               "-o", tmp_path / "ct.nii.gz", "--checkpoint", s1, "--fusion", strict, "--linear", lin) == 0
    assert "not fused with ridge" in capsys.readouterr().out
    assert json.loads((tmp_path / "ct.json").read_text())["fusion_applied"]["fused"] is False
