"""The `xray2ct` command line as the issue writes it (size 32), its files, and bad input (exit 2, nothing written)."""

import json

import nibabel as nib
import numpy as np
import pytest

from workbench.cli import main
from workbench.config import save_config
from workbench.tasks import get_task
from workbench.tasks.xray2ct.data import load_xray, save_picture


def run(*argv):
    return main(["--quiet", *map(str, argv)])


@pytest.fixture(scope="module")
def cases(tmp_path_factory):
    d = tmp_path_factory.mktemp("x2ct") / "data"
    assert run("xray2ct", "simulate", d, "--n", "6", "--size", "32", "--seed", "3", "--workers", "1") == 0
    return d


@pytest.fixture(scope="module")
def tiny_config(tmp_path_factory):
    cfg = get_task("xray2ct").default_config(real_ct_volumes=1)
    cfg.model.base_filters = 4
    cfg.model.options = {"view_channels": 4}
    cfg.train.val_every = cfg.train.checkpoint_every = 2
    cfg.data.batch_size = 2
    path = tmp_path_factory.mktemp("cfg") / "x2ct.yaml"
    save_config(cfg, path)
    return path


@pytest.fixture(scope="module")
def checkpoint(cases, tiny_config, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("run")
    assert run("xray2ct", "train", cases, "--out", run_dir, "--config", tiny_config, "--steps", "4") == 0
    return run_dir / "best.pt"


def test_simulate_writes_documented_case_files(cases):
    case = cases / "case_000"
    assert sorted(p.name for p in case.iterdir()) == ["ct.nii.gz", "ct_hr.nii.gz", "geometry.json", "labels.nii.gz",
                                                     "xray_ap.nii.gz", "xray_lat.nii.gz"]
    ct, hr = nib.load(case / "ct.nii.gz"), nib.load(case / "ct_hr.nii.gz")
    assert ct.shape == (32, 32, 32) and hr.shape == (64, 64, 64)
    # the stage-1 grid is the 2x average of the fine reference (what stage 2 inverts)
    pooled = np.asarray(hr.dataobj).reshape(32, 2, 32, 2, 32, 2).mean((1, 3, 5))
    assert np.allclose(np.asarray(ct.dataobj), pooled, atol=1e-3)
    assert nib.aff2axcodes(ct.affine) == ("L", "A", "S")
    geo = json.loads((case / "geometry.json").read_text())
    assert geo["kind"] == "parallel" and geo["size"] == 32 and "seed" in geo and "phantom" in geo
    assert load_xray(case / "xray_ap.nii.gz").shape == (32, 32)
    # resumable: a second call keeps the cases
    mtime = (case / "ct.nii.gz").stat().st_mtime_ns
    assert run("xray2ct", "simulate", cases, "--n", "6", "--size", "32", "--seed", "3", "--workers", "1") == 0
    assert (case / "ct.nii.gz").stat().st_mtime_ns == mtime
    assert run("xray2ct", "simulate", cases, "--n", "6", "--size", "32", "--seed", "4") == 2


def test_train_predict_refine_evaluate(cases, checkpoint, tmp_path, capsys):
    case = cases / "case_001"
    out = tmp_path / "ct.nii.gz"
    assert run("xray2ct", "predict", "--ap", case / "xray_ap.nii.gz", "--lateral", case / "xray_lat.nii.gz",
               "-o", out, "--checkpoint", checkpoint) == 0
    img = nib.load(out)
    assert img.shape == (32, 32, 32) and np.allclose(img.affine, nib.load(case / "ct.nii.gz").affine)
    assert json.loads((tmp_path / "ct.json").read_text())["checkpoint"] == str(checkpoint)
    capsys.readouterr()
    assert run("xray2ct", "evaluate", out, "--reference", case / "ct.nii.gz", "--json") == 0
    metrics = json.loads(capsys.readouterr().out)
    assert {"psnr", "ssim", "dice_lung", "dice_bone", "reprojection_error", "mae_hu"} <= set(metrics)


def test_stage2_trains_on_stage1_outputs_and_refines(cases, checkpoint, tmp_path):
    run2 = tmp_path / "run2"
    cfg = get_task("sr").default_config(scale=2)
    cfg.model.base_filters, cfg.model.options = 4, {"growth": 4, "num_blocks": 1}
    cfg.train.val_every = cfg.train.checkpoint_every = 2
    cfg.data.batch_size = 2
    cfg.options = {**cfg.options, "lr_patch": 8}
    save_config(cfg, tmp_path / "sr.yaml")
    assert run("xray2ct", "train", cases, "--out", run2, "--stage", "2", "--stage1", checkpoint,
               "--config", tmp_path / "sr.yaml", "--steps", "2") == 0
    assert "stage-1 outputs" in (run2 / "stage2.json").read_text()
    case = cases / "case_002"
    out = tmp_path / "fine.nii.gz"
    assert run("xray2ct", "predict", "--ap", case / "xray_ap.nii.gz", "--lateral", case / "xray_lat.nii.gz",
               "-o", out, "--checkpoint", checkpoint, "--refine", run2 / "best.pt") == 0
    img = nib.load(out)
    assert img.shape == (64, 64, 64) and np.allclose(img.affine, nib.load(case / "ct_hr.nii.gz").affine)
    assert run("xray2ct", "evaluate", out, "--reference", case / "ct_hr.nii.gz") == 0


def test_linear_baselines_fit_and_run(cases, tmp_path):
    assert run("xray2ct", "train", cases, "--out", tmp_path / "lin", "--stage", "linear") == 0
    case = cases / "case_000"
    for method in ("backprojection", "atlas", "ridge"):
        out = tmp_path / f"{method}.nii.gz"
        extra = [] if method == "backprojection" else ["--model", tmp_path / "lin" / "linear.npz"]
        assert run("xray2ct", "baseline", method, "--ap", case / "xray_ap.nii.gz", "--lateral",
                   case / "xray_lat.nii.gz", "-o", out, *extra) == 0
        vol = np.asarray(nib.load(out).dataobj)
        assert vol.shape == (32, 32, 32) and np.isfinite(vol).all()


def test_project_any_ct_and_read_png(cases, tmp_path):
    case = tmp_path / "case"
    assert run("xray2ct", "project", cases / "case_000" / "ct_hr.nii.gz", "-o", case, "--png") == 0
    nii = load_xray(case / "xray_ap.nii.gz")
    png = load_xray(case / "xray_ap.png")
    assert nii.shape == png.shape == (64, 64)
    # 16 bits kept (a PNG cannot hold the slightly negative integrals photon noise gives in air)
    assert np.abs(np.clip(nii, 0, 10) - png).max() <= 10.0 / 65535 + 1e-6
    tif = tmp_path / "ap.tif"
    from PIL import Image
    Image.fromarray(np.ascontiguousarray(nii.T[::-1]).astype(np.float32)).save(tif)
    assert np.allclose(load_xray(tif), nii)


def test_bad_input_exits_2_and_writes_nothing(cases, checkpoint, tmp_path, cli_refuses):
    case = cases / "case_000"
    ap, lat = case / "xray_ap.nii.gz", case / "xray_lat.nii.gz"
    out = tmp_path / "out.nii.gz"

    def refused(*argv, match):
        cli_refuses(out, *argv, match=match)

    refused("xray2ct", "predict", "--ap", ap, "-o", out, "--checkpoint", checkpoint, match="--lateral is missing")
    small = tmp_path / "small.png"
    save_picture(small, np.ones((16, 16)))
    refused("xray2ct", "predict", "--ap", ap, "--lateral", small, "-o", out, "--checkpoint", checkpoint,
            match="differ in size")
    refused("xray2ct", "predict", "--ap", case / "ct.nii.gz", "--lateral", lat, "-o", out, "--checkpoint", checkpoint,
            match="is this a CT volume")
    # X-rays of a geometry the checkpoint was not trained for (cone beam)
    cone = tmp_path / "cone"
    assert run("xray2ct", "simulate", cone, "--n", "1", "--size", "32", "--geometry", "cone", "--hr-size", "0",
               "--workers", "1") == 0
    refused("xray2ct", "predict", "--ap", cone / "case_000" / "xray_ap.nii.gz", "--lateral",
            cone / "case_000" / "xray_lat.nii.gz", "-o", out, "--checkpoint", checkpoint, match="not trained for")
    # the default (shipped, 64 px) checkpoint refuses 32 px X-rays
    refused("xray2ct", "predict", "--ap", ap, "--lateral", lat, "-o", out, match="pixels")
    refused("xray2ct", "predict", "--ap", ap, "--lateral", lat, "-o", ap, "--checkpoint", checkpoint,
            match="input")
    assert load_xray(ap).shape == (32, 32)                       # the input survived
    refused("xray2ct", "evaluate", case / "ct_hr.nii.gz", "--reference", case / "ct.nii.gz", match="same grid")
    refused("xray2ct", "train", cases, "--out", tmp_path / "r", "--resume", match="last.pt")


def test_stage1_trains_under_torchrun_with_two_gloo_processes(cases, tiny_config, tmp_path):
    import os
    import sys

    run_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    from _ddp_worker import run_torchrun

    proc = run_torchrun([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                         "-m", "workbench.cli", "--quiet", "xray2ct", "train", str(cases), "--out", str(run_dir),
                         "--config", str(tiny_config), "--steps", "2"], env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("stage 1: 2 steps") == 1           # rank 0 alone reports
    assert (run_dir / "best.pt").is_file()
    from workbench.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(run_dir / "last.pt")
    assert ckpt["task_meta"]["task"] == "xray2ct"
