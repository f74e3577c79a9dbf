"""Reader/writer round trip, sample data, the npe2 manifest, and the core staying free of Qt/napari."""

from __future__ import annotations

import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest


@pytest.fixture(scope="module")
def written_phantom(tmp_path_factory):
    from workbench.data.phantoms import simulate_dwi, write_phantom

    p = simulate_dwi(shape=(12, 14, 8), scheme="dti", snr=15.0, seed=1)
    out = tmp_path_factory.mktemp("phantom_io")
    return p, write_phantom(p, out)


def test_manifest_is_valid_and_lists_every_contribution():
    from npe2 import PluginManifest

    pm = PluginManifest.from_distribution("recon-workbench")
    pm.validate_imports()  # every python_name resolves
    c = pm.contributions
    assert [r.filename_patterns for r in c.readers] == [["*.nii", "*.nii.gz"]]
    assert {tuple(w.layer_types) for w in c.writers} == {("image",), ("labels",)}
    assert [s.key for s in c.sample_data] == ["dwi_phantom", "soil_sr", "chest_sr", "soil_sr3", "soil_sr3_coarse",
                                              "dot_phantom", "xray2ct_phantom"]
    assert {w.display_name for w in c.widgets} == {"Train", "Denoise", "Predict", "Compare", "Edge maps",
                                                    "Attention maps", "Clinician review", "Reconstruct NIR-DOT",
                                                    "Reconstruct CT from X-rays"}
    result = subprocess.run(["npe2", "validate", "recon-workbench"], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_widgets_are_listed_under_the_plugins_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    menubar = viewer.window._qt_window.menuBar()
    plugins = next(a.menu() for a in menubar.actions() if "Plugins" in a.text())
    ours = next(a.menu() for a in plugins.actions() if a.text() == "Reconstruction Workbench")  # task-generic
    assert [a.text() for a in ours.actions()] == ["Train", "Denoise", "Predict", "Compare", "Edge maps",
                                                 "Attention maps", "Clinician review", "Reconstruct NIR-DOT",
                                                 "Reconstruct CT from X-rays"]
    ours.actions()[0].trigger()  # opens the Train panel from the menu
    assert any("Train" in name for name in viewer.window.dock_widgets)


def test_core_never_imports_qt_or_napari():
    code = ("import sys, workbench, workbench.api, workbench.inference, workbench.metrics, workbench.baselines;"
            "import workbench.tasks.dot.task, workbench.tasks.dot.workflow, workbench.tasks.dot.notebook;"
            "import workbench.tasks.xray2ct.task, workbench.tasks.xray2ct.workflow, workbench.tasks.xray2ct.metrics;"
            "bad=[m for m in sys.modules if m.split('.')[0] in ('napari','qtpy','PyQt5','PyQt6','PySide2','PySide6')];"
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_reader_opens_4d_dwi_volume_axis_first_with_geometry_and_gradients(written_phantom):
    from napari_plugin._reader import get_reader

    p, files = written_phantom
    assert get_reader(str(files["dwi"]).replace(".nii.gz", ".txt")) is None
    (data, kwargs, kind), = get_reader(str(files["dwi"]))(str(files["dwi"]))
    assert kind == "image" and data.shape == (p.noisy.shape[3],) + p.noisy.shape[:3]
    np.testing.assert_allclose(data[3], p.noisy[..., 3], rtol=1e-5)
    vox = np.sqrt((p.affine[:3, :3] ** 2).sum(0))
    np.testing.assert_allclose(kwargs["scale"], [1.0, *vox])
    np.testing.assert_allclose(kwargs["translate"], [0.0, *p.affine[:3, 3]])
    meta = kwargs["metadata"]
    np.testing.assert_allclose(meta["affine"], p.affine)
    np.testing.assert_allclose(meta["bvals"], p.bvals)
    np.testing.assert_allclose(meta["bvecs"], p.bvecs, atol=1e-6)
    assert meta["header"] is not None and meta["source_path"] == str(files["dwi"])

    (mask, mkw, mkind), = get_reader(str(files["mask"]))(str(files["mask"]))
    assert mkind == "labels" and mask.shape == p.mask.shape and set(np.unique(mask)) <= {0, 1}


def test_writer_round_trip_keeps_affine_header_and_gradients(written_phantom, tmp_path, make_napari_viewer):
    from napari_plugin._reader import read_nifti
    from workbench.io_utils import InputError

    p, files = written_phantom
    viewer = make_napari_viewer()
    layers = viewer.open(str(files["dwi"]), plugin="recon-workbench")
    (layer,) = layers
    assert viewer.dims.ndim == 4 and layer.data.shape[0] == p.noisy.shape[3]
    out = tmp_path / "copy.nii.gz"
    written = layer.save(str(out), plugin="recon-workbench")
    assert str(out) in written
    img, src = nib.load(str(out)), nib.load(str(files["dwi"]))
    np.testing.assert_allclose(img.affine, src.affine)
    assert img.header.get_zooms() == src.header.get_zooms()
    assert img.header["qform_code"] == src.header["qform_code"] and img.header["sform_code"] == src.header["sform_code"]
    np.testing.assert_allclose(np.asarray(img.dataobj), p.noisy, rtol=1e-5)
    assert (tmp_path / "copy.bval").is_file() and (tmp_path / "copy.bvec").is_file()
    (data, kwargs, _), = read_nifti(str(out))
    np.testing.assert_allclose(kwargs["metadata"]["bvals"], p.bvals)

    mask_layer = viewer.open(str(files["mask"]), plugin="recon-workbench")[0]
    mask_out = tmp_path / "mask_copy.nii.gz"
    mask_layer.save(str(mask_out), plugin="recon-workbench")
    np.testing.assert_array_equal(np.asarray(nib.load(str(mask_out)).dataobj) > 0, p.mask)
    np.testing.assert_allclose(nib.load(str(mask_out)).affine, p.affine)

    with pytest.raises(InputError):  # never overwrite the file a layer was read from
        from napari_plugin._writer import write_image

        write_image(str(files["dwi"]), layer.data, {"metadata": layer.metadata})


def test_sample_data_gives_noisy_clean_and_mask_on_one_grid(make_napari_viewer):
    from napari_plugin._sample_data import CLEAN_NAME, MASK_NAME, NOISY_NAME

    viewer = make_napari_viewer()
    viewer.open_sample("recon-workbench", "dwi_phantom")
    noisy, clean, mask = (viewer.layers[n] for n in (NOISY_NAME, CLEAN_NAME, MASK_NAME))
    assert noisy.data.shape == clean.data.shape == (22, 32, 32, 16)
    assert mask.data.shape == (32, 32, 16) and type(mask).__name__ == "Labels"
    np.testing.assert_allclose(noisy.scale[1:], mask.scale)
    np.testing.assert_allclose(noisy.translate[1:], mask.translate)
    assert len(noisy.metadata["bvals"]) == 22 and noisy.metadata["bvecs"].shape == (22, 3)
