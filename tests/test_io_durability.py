"""Atomic writes keep plain-open permissions and survive crashes; impossible gradient tables and
mismatched evaluate inputs are refused with a message naming the real problem (issue 16)."""

import os
import signal
import stat
import subprocess
import sys
import textwrap

import nibabel as nib
import numpy as np
import pytest

from workbench.cli import main
from workbench.io_utils import atomic_path, atomic_write_text


def _mode(p):
    return stat.S_IMODE(os.stat(p).st_mode)


@pytest.fixture
def umask():
    old = os.umask(0o022)
    os.umask(old)

    def set_(value):
        os.umask(value)

    yield set_
    os.umask(old)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_new_files_get_the_umask_permissions(tmp_path, umask, mask, expected):
    umask(mask)
    atomic_write_text(tmp_path / "a.txt", "x")
    assert _mode(tmp_path / "a.txt") == expected


def test_replacing_a_file_keeps_its_mode(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "a.txt"
    target.write_text("old")
    os.chmod(target, 0o640)
    atomic_write_text(target, "new")
    assert target.read_text() == "new" and _mode(target) == 0o640


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "ckpt.pt"
    target.write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert target.read_text() == "good" and sorted(os.listdir(tmp_path)) == ["ckpt.pt"]


def test_a_writer_killed_mid_write_leaves_the_old_file(tmp_path):
    target = tmp_path / "vol.nii.gz"
    target.write_bytes(b"good")
    code = textwrap.dedent(f"""
        import os, sys, time
        from workbench.io_utils import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            tmp.write_bytes(b"partial")
            print("writing", flush=True)
            time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert target.read_bytes() == b"good"
    visible = [n for n in os.listdir(tmp_path) if not n.startswith(".")]
    assert visible == ["vol.nii.gz"]  # a killed process cannot clean up: its temporary is hidden (dot file)


def _series(tmp_path, bvals, bvecs):
    rng = np.random.default_rng(0)
    data = (100 + rng.random((6, 6, 4, len(bvals))) * 10).astype(np.float32)
    nib.save(nib.Nifti1Image(data, np.eye(4)), str(tmp_path / "dwi.nii.gz"))
    np.savetxt(tmp_path / "dwi.bval", np.asarray(bvals)[None], fmt="%g")
    np.savetxt(tmp_path / "dwi.bvec", np.asarray(bvecs, float).T, fmt="%g")
    return tmp_path / "dwi.nii.gz"


UNIT = [[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]


@pytest.mark.parametrize("bvals, bvecs, words", [
    ([0, 1000, -1000, 1000], UNIT, "volume 2 has a negative b-value"),
    ([0, 1000, np.nan, 1000], UNIT, "volume 2 has a NaN/Inf"),
    ([0, 1000, 1000, 1000], [[0, 0, 0], [1, 0, 0], [0, 3, 0], [0, 0, 1]], "volume 2 (b=1000) has a b-vector of length 3"),
])
def test_impossible_gradient_tables_are_refused_before_training(tmp_path, capsys, bvals, bvecs, words):
    dwi = _series(tmp_path, bvals, bvecs)
    assert main(["--quiet", "train", str(dwi), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert words in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_n_by_3_bvecs_are_still_accepted(tmp_path):
    from workbench.data.nifti import read_bvals_bvecs

    _series(tmp_path, [0, 1000, 1000, 1000], UNIT)
    np.savetxt(tmp_path / "dwi.bvec", np.asarray(UNIT, float), fmt="%g")  # N x 3 on disk
    bvals, bvecs = read_bvals_bvecs(tmp_path / "dwi.bval", tmp_path / "dwi.bvec")
    assert bvecs.shape == (4, 3)


def test_evaluate_with_a_reference_of_another_shape_says_so(tmp_path, capsys):
    dwi = _series(tmp_path, [0, 1000, 1000, 1000], UNIT)
    ref = tmp_path / "ref.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((6, 6, 4, 1), np.float32), np.eye(4)), str(ref))
    assert main(["--quiet", "evaluate", str(dwi), "--reference", str(ref)]) == 2
    err = capsys.readouterr().err
    assert "(6, 6, 4, 4)" in err and "(6, 6, 4, 1)" in err and "J-invariant" not in err
