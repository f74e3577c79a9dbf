"""NIfTI and gradient-file I/O on real files: round trips and every bad input."""

import nibabel as nib
import numpy as np
import pytest

from workbench.data.nifti import (
    ensure_distinct_output,
    load_dwi,
    read_bvals_bvecs,
    save_dwi,
    save_gradients,
    save_volume,
)
from workbench.io_utils import InputError, atomic_path


def _write_series(tmp_path, data, n_grad=None, name="dwi"):
    affine = np.diag([2.0, 2.5, 3.0, 1.0])
    affine[:3, 3] = [-10, 5, 7]
    path = tmp_path / f"{name}.nii.gz"
    nib.save(nib.Nifti1Image(data, affine), str(path))
    n = data.shape[-1] if n_grad is None else n_grad
    bvals = np.array([0] + [1000] * (n - 1), float)
    bvecs = np.random.default_rng(0).normal(size=(n, 3))
    bvecs /= np.linalg.norm(bvecs, axis=1, keepdims=True)
    bvecs[0] = 0
    save_gradients(tmp_path / name, bvals, bvecs)
    return path, affine, bvals, bvecs


def test_round_trip_keeps_affine_header_and_gradients(tmp_path):
    data = np.random.default_rng(0).random((7, 6, 5, 4)).astype(np.float32) + 0.1
    path, affine, bvals, bvecs = _write_series(tmp_path, data)
    series = load_dwi(path)
    assert np.allclose(series.affine, affine)
    assert series.voxel_size == pytest.approx((2.0, 2.5, 3.0))
    assert np.allclose(series.bvals, bvals) and np.allclose(series.bvecs, bvecs, atol=1e-6)
    out = tmp_path / "out" / "den.nii.gz"
    save_dwi(out, series, series.data * 2)
    back = load_dwi(out)
    assert np.allclose(back.affine, affine)
    assert np.allclose(back.data, data * 2)
    assert back.header.get_data_dtype() == np.float32
    assert np.allclose(back.bvals, bvals)
    # C order in memory (nibabel's arrays are Fortran-ordered: NIfTI is x-fastest on disk), same values
    assert series.data.flags.c_contiguous and np.array_equal(series.data, data)
    assert np.asarray(nib.load(str(path)).dataobj).flags.f_contiguous


def test_integer_input_is_written_as_float(tmp_path):
    data = (np.random.default_rng(0).random((5, 5, 5, 3)) * 1000).astype(np.int16) + 1
    path, *_ = _write_series(tmp_path, data)
    series = load_dwi(path)
    out = tmp_path / "o.nii.gz"
    save_dwi(out, series, series.data + 0.25)
    assert np.allclose(nib.load(str(out)).get_fdata(), data + 0.25)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="not found"):
        load_dwi(tmp_path / "nope.nii.gz")


def test_3d_file_is_refused(tmp_path):
    path = tmp_path / "t1.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), str(path))
    with pytest.raises(InputError, match="must be 4D"):
        load_dwi(path)


def test_bval_count_mismatch(tmp_path):
    data = np.ones((4, 4, 4, 5), np.float32)
    path, *_ = _write_series(tmp_path, data, n_grad=6)
    with pytest.raises(InputError, match="6 b-values but .* 5 volumes"):
        load_dwi(path)


def test_bval_bvec_disagree(tmp_path):
    (tmp_path / "g.bval").write_text("0 1000 1000\n")
    (tmp_path / "g.bvec").write_text("0 1 0 0\n0 0 1 0\n0 0 0 1\n")
    with pytest.raises(InputError, match="3 b-values but .* 4 vectors"):
        read_bvals_bvecs(tmp_path / "g.bval", tmp_path / "g.bvec")


def test_missing_gradients_names_the_fix(tmp_path):
    path = tmp_path / "x.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 3), np.float32), np.eye(4)), str(path))
    with pytest.raises(InputError, match="x.bval and x.bvec"):
        load_dwi(path)


def test_nan_voxels_are_counted_and_optionally_zeroed(tmp_path):
    data = np.ones((4, 4, 4, 3), np.float32)
    data[0, 0, 0, 1] = np.nan
    data[1, 0, 0, 2] = np.inf
    path, *_ = _write_series(tmp_path, data)
    with pytest.raises(InputError, match="2 NaN/Inf voxels.*--nan-to-zero"):
        load_dwi(path)
    series = load_dwi(path, nan_to_zero=True)
    assert np.isfinite(series.data).all() and series.data[0, 0, 0, 1] == 0


def test_all_zero_volume_is_refused(tmp_path):
    data = np.ones((4, 4, 4, 3), np.float32)
    data[..., 1] = 0
    path, *_ = _write_series(tmp_path, data)
    with pytest.raises(InputError, match=r"volume\(s\) \[1\] are all zero"):
        load_dwi(path)


def test_output_equal_to_input_is_refused(tmp_path):
    data = np.ones((4, 4, 4, 3), np.float32)
    path, *_ = _write_series(tmp_path, data)
    with pytest.raises(InputError, match="is the input"):
        ensure_distinct_output(path, path)
    with pytest.raises(InputError, match="is the input"):
        ensure_distinct_output(tmp_path / "." / "dwi.nii.gz", path)
    with pytest.raises(InputError, match=".nii"):
        ensure_distinct_output(tmp_path / "out.txt", path)


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    target = tmp_path / "keep.nii.gz"
    target.write_bytes(b"original")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"original"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.nii.gz"]


def test_save_volume_is_readable(tmp_path):
    out = save_volume(tmp_path / "m.nii", np.ones((3, 3, 3)), np.eye(4), dtype=np.uint8)
    assert nib.load(str(out)).get_data_dtype() == np.uint8
