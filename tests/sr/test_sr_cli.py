"""The `sr` command-line contract of the task-layer issue, run exactly as written, and bad input."""

import json

import nibabel as nib
import numpy as np
import pytest

from workbench.cli import main
from workbench.config import save_config
from workbench.tasks import get_task
from workbench.tasks.sr.degrade import hr_affine


def run(*argv):
    return main(["--quiet", *map(str, argv)])


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    d = tmp_path_factory.mktemp("soil")
    assert run("sr", "simulate", d, "--kind", "soil", "--scale", "2", "--n", "3", "--size", "24", "--seed", "1") == 0
    return d


def test_tasks_lists_every_task(capsys):
    assert run("tasks") == 0
    out = capsys.readouterr().out
    assert out.startswith("dwi") and "\nsr " in out and "super-resolution" in out


def test_simulate_writes_aligned_pairs(pairs):
    names = sorted(p.name for p in pairs.iterdir())
    assert names == ["hr_000.nii.gz", "hr_001.nii.gz", "hr_002.nii.gz", "lr_000.nii.gz", "lr_001.nii.gz",
                     "lr_002.nii.gz", "pairs.json"]
    hr, lr = nib.load(pairs / "hr_000.nii.gz"), nib.load(pairs / "lr_000.nii.gz")
    assert hr.shape == (24, 24, 24) and lr.shape == (12, 12, 12)
    assert np.allclose(hr_affine(lr.affine, (2, 2, 2)), hr.affine)
    assert json.loads((pairs / "pairs.json").read_text())["scale"] == [2, 2, 2]


def test_baseline_and_evaluate(pairs, tmp_path, capsys):
    out = tmp_path / "tri.nii.gz"
    assert run("sr", "baseline", "tricubic", pairs / "lr_000.nii.gz", "-o", out, "--scale", "2") == 0
    img = nib.load(out)
    assert img.shape == (24, 24, 24) and np.allclose(img.affine, nib.load(pairs / "hr_000.nii.gz").affine)
    capsys.readouterr()
    assert run("sr", "evaluate", out, "--reference", pairs / "hr_000.nii.gz", "--json") == 0
    metrics = json.loads(capsys.readouterr().out)
    assert 10 < metrics["psnr"] < 60 and 0 < metrics["ssim"] < 1


def test_degrade_any_volume(pairs, tmp_path):
    out = tmp_path / "lr4.nii.gz"
    assert run("sr", "degrade", pairs / "hr_000.nii.gz", "-o", out, "--scale", "4", "--seed", "3") == 0
    assert nib.load(out).shape == (6, 6, 6)


def test_train_resume_and_predict_with_the_checkpoint(pairs, tmp_path):
    cfg = get_task("sr").default_config(scale=2, lr_patch=8)
    cfg.model.base_filters = 8
    cfg.model.options = {"growth": 4, "num_blocks": 1}
    cfg.train.steps, cfg.train.val_every, cfg.train.checkpoint_every = 3, 3, 3
    cfg.data.batch_size = 2
    save_config(cfg, tmp_path / "cfg.yaml")
    run_dir = tmp_path / "run"
    assert run("sr", "train", pairs, "--out", run_dir, "--config", tmp_path / "cfg.yaml") == 0
    assert (run_dir / "last.pt").is_file() and (run_dir / "best.pt").is_file()
    assert run("sr", "train", pairs, "--out", run_dir, "--config", tmp_path / "cfg.yaml", "--steps", "5",
               "--resume") == 0
    out = tmp_path / "sr.nii.gz"
    assert run("sr", "predict", pairs / "lr_001.nii.gz", "-o", out, "--checkpoint", run_dir / "last.pt") == 0
    assert nib.load(out).shape == (24, 24, 24)
    # the checkpoint was trained for x2: asking for x4 is refused before anything is written
    out4 = tmp_path / "sr4.nii.gz"
    assert run("sr", "predict", pairs / "lr_001.nii.gz", "-o", out4, "--checkpoint", run_dir / "last.pt",
               "--scale", "4") == 2
    assert not out4.exists()


def test_predict_uses_the_shipped_default(pairs, tmp_path):
    out = tmp_path / "sr.nii.gz"
    assert run("sr", "predict", pairs / "lr_000.nii.gz", "-o", out, "--scale", "2") == 0
    img = nib.load(out)
    assert img.shape == (24, 24, 24)
    assert np.allclose(img.affine, nib.load(pairs / "hr_000.nii.gz").affine)


def _save(path, data, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(np.asarray(data, np.float32), affine), str(path))
    return path


@pytest.mark.parametrize("case", ["4d", "nan", "same_output", "no_default_x8"])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(case, tmp_path, capsys):
    lr = _save(tmp_path / "lr.nii.gz", np.random.default_rng(0).random((8, 8, 8)))
    out = tmp_path / "out.nii.gz"
    args = ["sr", "predict", lr, "-o", out]
    if case == "4d":
        _save(lr, np.zeros((8, 8, 8, 3)))
        fix = "split a 4D series"
    elif case == "nan":
        data = np.ones((8, 8, 8))
        data[1, 2, 3] = np.nan
        _save(lr, data)
        fix = "nan"
    elif case == "same_output":
        args = ["sr", "predict", lr, "-o", lr]
        fix = "input"
    else:
        args += ["--scale", "8"]  # only an in-plane x8 network is shipped
        fix = "add --inplane"
    before = lr.read_bytes()
    assert run(*args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and fix.lower() in err.lower()
    assert not out.exists() and lr.read_bytes() == before


def test_training_pairs_on_mismatched_grids_are_refused(tmp_path, capsys):
    _save(tmp_path / "hr_000.nii.gz", np.zeros((16, 16, 14)))
    _save(tmp_path / "lr_000.nii.gz", np.zeros((8, 8, 8)), np.diag([2, 2, 2, 1]))
    assert run("sr", "train", tmp_path, "--out", tmp_path / "run", "--scale", "2", "--steps", "1") == 2
    assert "scale" in capsys.readouterr().err and not (tmp_path / "run" / "last.pt").exists()


def test_cancel_answers_within_one_window_and_writes_nothing(pairs, tmp_path):
    import nibabel as nib

    from workbench.tasks.base import Cancelled
    from workbench.tasks.sr import workflow
    from workbench.tasks.sr.predictor import SRPredictor

    predictor = SRPredictor.default(2)
    predictor.tile, predictor.overlap = 6, 2
    seen = []
    with pytest.raises(Cancelled):
        predictor.predict(nib.load(pairs / "lr_000.nii.gz").get_fdata().astype(np.float32),
                          progress=lambda d, t: seen.append((d, t)), should_stop=lambda: len(seen) >= 2)
    assert len(seen) == 2 and seen[-1][1] > 2  # stopped after two of the windows
    out = tmp_path / "sr.nii.gz"
    with pytest.raises(Cancelled):
        workflow.predict(pairs / "lr_000.nii.gz", out, scale=2, should_stop=lambda: True)
    assert not out.exists() and not list(tmp_path.iterdir())


def test_simulate_grain_radius_range(tmp_path, capsys):
    """`--grain-radius LO HI` draws coarser soils; a reversed range is one line, exit 2, nothing written."""
    assert run("sr", "simulate", tmp_path / "coarse", "--scale", "8", "--inplane", "--n", "1", "--size", "32",
               "--grain-radius", "8", "10") == 0
    assert (tmp_path / "coarse" / "hr_000.nii.gz").exists()
    assert run("sr", "simulate", tmp_path / "bad", "--scale", "8", "--inplane", "--n", "1", "--size", "32",
               "--grain-radius", "6", "2") == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "grain_radius" in err and not (tmp_path / "bad").exists()
