"""The command line end to end on a tiny phantom, and every bad input it must refuse cleanly."""

import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from workbench.cli import main

TINY = """
data: {patch_size: 8, batch_size: 2}
model: {name: denoiser, base_filters: 8, embedding_dim: 8}
train: {steps: 6, val_every: 3, checkpoint_every: 3, lr: 0.001}
"""


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim")
    assert main(["--quiet", "simulate", str(out), "--scheme", "dti", "--snr", "10", "--seed", "1",
                 "--shape", "16", "18", "10"]) == 0
    (out / "tiny.yaml").write_text(TINY)
    return out


def _err(capsys):
    return capsys.readouterr().err


def test_simulate_writes_the_five_files(sim):
    for name in ["dwi.nii.gz", "dwi.bval", "dwi.bvec", "clean.nii.gz", "mask.nii.gz"]:
        assert (sim / name).is_file()
    assert nib.load(str(sim / "dwi.nii.gz")).shape == (16, 18, 10, 22)


def test_train_resume_denoise_evaluate(sim, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--quiet", "train", str(sim / "dwi.nii.gz"), "--out", str(run), "--config",
                 str(sim / "tiny.yaml")]) == 0
    for name in ["config.yaml", "last.pt", "best.pt", "metrics.csv"]:
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    # resume with more steps continues from step 6
    (sim / "more.yaml").write_text(TINY.replace("steps: 6", "steps: 9"))
    assert main(["--quiet", "train", str(sim / "dwi.nii.gz"), "--out", str(run), "--config",
                 str(sim / "more.yaml"), "--resume"]) == 0
    assert "after 9 steps" in capsys.readouterr().out
    out = tmp_path / "den.nii.gz"
    assert main(["--quiet", "denoise", str(sim / "dwi.nii.gz"), "-o", str(out), "--checkpoint",
                 str(run / "best.pt"), "--mask", str(sim / "mask.nii.gz")]) == 0
    img, src = nib.load(str(out)), nib.load(str(sim / "dwi.nii.gz"))
    assert img.shape == src.shape and np.allclose(img.affine, src.affine)
    assert (tmp_path / "den.bval").is_file() and (tmp_path / "den.bvec").is_file()
    report = json.loads((tmp_path / "den.json").read_text())
    assert report["heldout_mse"] > 0 and "sigma" in report and "sigma_source" in report["extra"]
    capsys.readouterr()
    assert main(["evaluate", str(out), "--reference", str(sim / "clean.nii.gz"), "--mask",
                 str(sim / "mask.nii.gz"), "--bval", str(sim / "dwi.bval"), "--bvec", str(sim / "dwi.bvec"),
                 "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    for key in ["psnr_dwi", "ssim_dwi", "rmse_dwi", "psnr_all", "fa_rmse", "fa_rmse_wm", "md_rmse"]:
        assert np.isfinite(metrics[key]), key


def test_denoised_volume_inputs_travel_with_the_checkpoint(sim, tmp_path):
    """A network trained on denoised volume inputs (same channel count as noisy ones) is applied to them."""
    from workbench.data.nifti import load_dwi
    from workbench.inference import Denoiser

    (tmp_path / "den.yaml").write_text(TINY.replace("data: {", "data: {volume_input: denoised, "))
    run = tmp_path / "run"
    assert main(["--quiet", "train", str(sim / "dwi.nii.gz"), "--out", str(run), "--config",
                 str(tmp_path / "den.yaml")]) == 0
    denoiser = Denoiser.from_checkpoint(run / "best.pt")
    assert denoiser.config.data.volume_input == "denoised"
    series = load_dwi(sim / "dwi.nii.gz")
    mask = nib.load(str(sim / "mask.nii.gz")).get_fdata() > 0
    subject = denoiser.prepare(series.data, series.bvals, series.bvecs, mask)
    assert subject.denoised is not None and subject.denoised.n_folds == denoiser.config.data.prior_folds
    out = tmp_path / "den.nii.gz"
    assert main(["--quiet", "denoise", str(sim / "dwi.nii.gz"), "-o", str(out), "--checkpoint",
                 str(run / "best.pt"), "--mask", str(sim / "mask.nii.gz")]) == 0
    assert np.isfinite(nib.load(str(out)).get_fdata()).all()


def test_denoise_self_supervised_without_checkpoint(sim, tmp_path, capsys):
    out = tmp_path / "self.nii.gz"
    assert main(["--quiet", "denoise", str(sim / "dwi.nii.gz"), "-o", str(out), "--config",
                 str(sim / "tiny.yaml"), "--no-amp", "--run-dir", str(tmp_path / "keep")]) == 0
    assert out.is_file() and (tmp_path / "keep" / "best.pt").is_file()
    text = capsys.readouterr().out
    assert "held-out MSE" in text and "RMS noise of the magnitude data" in text
    report = json.loads(out.with_name("self.json").read_text())
    if report["sigma"] is not None and report["sigma"] > report["sigma_upper"]:  # the CLI says why, not "sigma <="
        assert "Rician" in text
    if report["sigma"] is not None:  # the estimate per shell, in OUT.json and on the console, warning included
        shells = report["est_rmse_per_shell"]
        assert [r["b"] for r in shells] == sorted(r["b"] for r in shells) and shells[0]["b"] == 0
        assert sum(r["volumes"] for r in shells) == report["n_volumes"]
        assert "per shell: b=0:" in text
        flagged = any(r["flagged"] for r in shells)
        assert (report["est_warning"] is not None) == flagged == ("may be low" in text)


def test_baseline_through_same_io(sim, tmp_path):
    out = tmp_path / "p2s.nii.gz"
    assert main(["--quiet", "baseline", "patch2self", str(sim / "dwi.nii.gz"), "-o", str(out)]) == 0
    assert nib.load(str(out)).shape == (16, 18, 10, 22)


def _assert_clean_failure(capsys, argv, pattern, folder):
    before = sorted(p.name for p in folder.iterdir())
    assert main(argv) == 2
    err = _err(capsys)
    assert pattern in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert sorted(p.name for p in folder.iterdir()) == before


def test_bad_inputs_give_one_line_and_write_nothing(sim, tmp_path, capsys):
    dwi = str(sim / "dwi.nii.gz")
    _assert_clean_failure(capsys, ["denoise", str(tmp_path / "missing.nii.gz"), "-o", str(tmp_path / "o.nii.gz")],
                          "not found", tmp_path)
    _assert_clean_failure(capsys, ["denoise", dwi, "-o", dwi], "is the input", sim)
    three_d = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(three_d))
    _assert_clean_failure(capsys, ["denoise", str(three_d), "-o", str(tmp_path / "o.nii.gz")], "must be 4D", tmp_path)
    bad_bval = tmp_path / "bad.bval"
    bad_bval.write_text(" ".join(["1000"] * 5))
    bad_bvec = tmp_path / "bad.bvec"
    bad_bvec.write_text("\n".join([" ".join(["1"] * 5)] * 3))
    _assert_clean_failure(capsys, ["denoise", dwi, "-o", str(tmp_path / "o.nii.gz"), "--bval", str(bad_bval),
                                   "--bvec", str(bad_bvec)], "5 b-values but", tmp_path)
    nan = tmp_path / "nan.nii.gz"
    data = nib.load(dwi).get_fdata().astype(np.float32)
    data[1, 1, 1, 0] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(nan))
    _assert_clean_failure(capsys, ["denoise", str(nan), "-o", str(tmp_path / "o.nii.gz"), "--bval",
                                   str(sim / "dwi.bval"), "--bvec", str(sim / "dwi.bvec")],
                          "1 NaN/Inf voxels", tmp_path)
    zero = tmp_path / "zero.nii.gz"
    data = nib.load(dwi).get_fdata().astype(np.float32)
    data[..., 3] = 0
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(zero))
    _assert_clean_failure(capsys, ["denoise", str(zero), "-o", str(tmp_path / "o.nii.gz"), "--bval",
                                   str(sim / "dwi.bval"), "--bvec", str(sim / "dwi.bvec")], "all zero", tmp_path)


def test_bad_checkpoints(sim, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["--quiet", "train", str(sim / "dwi.nii.gz"), "--out", str(run), "--config",
                 str(sim / "tiny.yaml")]) == 0
    # another number of volumes: drop two volumes from the series
    img = nib.load(str(sim / "dwi.nii.gz"))
    fewer = tmp_path / "fewer.nii.gz"
    nib.save(nib.Nifti1Image(img.get_fdata()[..., :20].astype(np.float32), img.affine), str(fewer))
    bvals = np.loadtxt(sim / "dwi.bval")[:20]
    bvecs = np.loadtxt(sim / "dwi.bvec")[:, :20]
    np.savetxt(tmp_path / "fewer.bval", bvals[None])
    np.savetxt(tmp_path / "fewer.bvec", bvecs)
    _assert_clean_failure(capsys, ["denoise", str(fewer), "-o", str(tmp_path / "o.nii.gz"), "--checkpoint",
                                   str(run / "best.pt")], "with 22 volumes; this data has 20", tmp_path)
    truncated = tmp_path / "trunc.pt"
    raw = (run / "best.pt").read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    _assert_clean_failure(capsys, ["denoise", str(sim / "dwi.nii.gz"), "-o", str(tmp_path / "o.nii.gz"),
                                   "--checkpoint", str(truncated)], "truncated", tmp_path)
    # a checkpoint from another model: rename the model in the stored config
    import torch

    ckpt = torch.load(run / "best.pt", weights_only=True)
    ckpt["config"]["model"]["name"] = "multiscale"
    other = tmp_path / "other.pt"
    torch.save(ckpt, other)
    _assert_clean_failure(capsys, ["denoise", str(sim / "dwi.nii.gz"), "-o", str(tmp_path / "o.nii.gz"),
                                   "--checkpoint", str(other)], "does not match model 'multiscale'", tmp_path)
    # resume without a run
    _assert_clean_failure(capsys, ["train", str(sim / "dwi.nii.gz"), "--out", str(tmp_path / "none"),
                                   "--resume", "--config", str(sim / "tiny.yaml")], "last.pt", tmp_path)


def test_config_errors_are_one_line(sim, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {stepz: 3}\n")
    assert main(["train", str(sim / "dwi.nii.gz"), "--out", str(tmp_path / "r"), "--config", str(bad)]) == 2
    err = _err(capsys)
    assert "stepz" in err and len(err.strip().splitlines()) == 1
    bad.write_text("model: {name: unet9000}\n")
    assert main(["train", str(sim / "dwi.nii.gz"), "--out", str(tmp_path / "r"), "--config", str(bad)]) == 2
    assert "known models" in _err(capsys)


def test_debug_shows_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "workbench.cli", "--debug", "denoise",
                           str(tmp_path / "x.nii.gz"), "-o", str(tmp_path / "y.nii.gz")],
                          capture_output=True, text=True, env={**os.environ})
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_default_config_prints_and_parses(capsys):
    from workbench.config import Config

    assert main(["config"]) == 0
    assert Config.from_yaml(capsys.readouterr().out) == Config()


def test_train_under_torchrun_two_gloo_processes(sim, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "workbench.cli", "--quiet", "train", str(sim / "dwi.nii.gz"), "--out", str(run),
                           "--config", str(sim / "tiny.yaml")], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("completed after 6 steps") == 1  # rank 0 alone reports
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file()


def test_demo_writes_figure_and_table(sim, tmp_path, capsys):
    from workbench.demo import run_demo

    out = tmp_path / "demo"
    text = run_demo(out, snr=10, seed=2, config=str(sim / "tiny.yaml"), shape=(16, 18, 10), scheme="dti")
    assert (out / "comparison.png").stat().st_size > 10_000
    table = (out / "results.md").read_text()
    assert table == text
    for row in ["| noisy |", "| ours |", "| mppca |", "| mppca+rc (Rician correction) |",
                "| mppca+post (our Rician inversion, free-water floor) |"]:
        assert row in table
    assert (out / "mppca_rc.nii.gz").is_file() and (out / "mppca_post.nii.gz").is_file()
    assert "estimated RMSE to clean" in table and "per shell: b=0:" in table and "b=1000:" in table
    with pytest.raises(Exception, match="not empty"):
        run_demo(out, config=str(sim / "tiny.yaml"), shape=(16, 18, 10), scheme="dti")


def test_progress_bar_is_one_bar_per_stage(capsys):
    """A stage that reports 0 of N first (a resumed DOT dataset) keeps one bar; a new name, total or a count that
    goes back starts the next."""
    from workbench.cli import _ProgressBar

    bar = _ProgressBar().stage("simulating", "case")
    bar.inference(0, 3)
    first = bar.bar
    bar.inference(1, 3)
    bar.inference(2, 3)
    assert bar.bar is first and first.n == 2
    bar.inference(3, 3)
    assert bar.bar is None and first.n == 3
    priors, blend = bar.stage_fn("priors", "plane"), bar.stage_fn("blend", "plane")
    priors(1, 5)
    in_priors = bar.bar
    assert in_priors.desc.startswith("priors")
    blend(1, 5)
    assert bar.bar is not in_priors and bar.bar.desc.startswith("blend")
    in_blend = bar.bar
    blend(4, 5)
    blend(2, 5)  # a count that went back: a second run of the stage
    assert bar.bar is not in_blend and bar.bar.n == 2
    bar.inference(5, 5)
    assert bar.bar is None
    err = capsys.readouterr().err
    assert err.count("simulating") >= 1 and "blend" in err
