"""The procedural 3-phase soil micro-CT simulator (workbench.tasks.sr.soil)."""

import numpy as np
import pytest
from scipy import ndimage

from workbench.io_utils import InputError
from workbench.tasks.sr.soil import SOIL_PHASES, simulate_soil


def test_same_seed_is_bit_identical_and_other_seeds_differ():
    a, la = simulate_soil((33, 34, 35), seed=3)
    b, lb = simulate_soil((33, 34, 35), seed=3)
    c, lc = simulate_soil((33, 34, 35), seed=4)
    assert a.tobytes() == b.tobytes() and np.array_equal(la, lb)
    assert not np.array_equal(a, c) and not np.array_equal(la, lc)


@pytest.mark.parametrize("shape", [(33, 34, 35), (17, 40, 9), (5, 6, 7)])
def test_any_shape_gives_float32_volume_and_uint8_labels(shape):
    vol, labels = simulate_soil(shape, seed=1)
    assert vol.shape == labels.shape == shape
    assert vol.dtype == np.float32 and labels.dtype == np.uint8
    assert np.isfinite(vol).all() and set(np.unique(labels)) <= {0, 1, 2}


@pytest.mark.parametrize("target", [0.15, 0.3, 0.45])
def test_three_phases_and_the_requested_porosity(target):
    _, labels = simulate_soil((32, 33, 34), seed=7, porosity=target)
    assert set(np.unique(labels)) == {0, 1, 2}
    assert abs(np.mean(labels == 0) - target) <= 0.03
    assert min(np.mean(labels == k) for k in (1, 2)) > 0.05  # matrix and grains both substantial


def test_default_porosity_is_drawn_per_seed_in_the_realistic_range():
    por = [np.mean(simulate_soil((24, 24, 24), seed=s)[1] == 0) for s in range(8)]
    assert all(0.12 <= p <= 0.48 for p in por)
    assert max(por) - min(por) > 0.1  # not one porosity for every seed


def test_phase_intensities_are_ordered_pore_matrix_mineral():
    vol, labels = simulate_soil((40, 40, 40), seed=2)
    means = [float(vol[labels == k].mean()) for k in range(3)]
    assert means[0] < means[1] < means[2]
    assert means[0] < 0.3 and 0.3 < means[1] < 0.6 and means[2] > 0.6  # ~0.1, ~0.45, ~0.8 before blur
    assert SOIL_PHASES == ("pore", "matrix", "mineral")


def test_scanner_adds_noise_and_blur():
    vol, labels = simulate_soil((40, 40, 40), seed=5)
    core = ndimage.binary_erosion(labels == 0, iterations=2)  # pore interior, away from the blurred edges
    assert core.sum() > 100
    assert 0.01 < vol[core].std() < 0.08  # noise ~0.02-0.04 (plus a little texture and cupping)
    # blur: voxels on a pore/mineral boundary sit between the two phase levels
    edge = (labels == 0) & ndimage.binary_dilation(labels == 2)
    assert vol[core].mean() < vol[edge].mean() < vol[ndimage.binary_erosion(labels == 2, iterations=2)].mean()


def test_grain_radius_controls_grain_size():
    def surface_per_volume(radius):
        labels = simulate_soil((40, 40, 40), seed=0, porosity=0.3, grain_radius=radius)[1]
        m = labels == 2
        return (m & ~ndimage.binary_erosion(m)).sum() / m.sum()

    assert surface_per_volume(5.0) < 0.7 * surface_per_volume(2.0)  # bigger grains, less surface


@pytest.mark.parametrize("kwargs", [dict(shape=(8, 8)), dict(shape=(8, 0, 8)), dict(porosity=1.2),
                                    dict(porosity=-0.1), dict(grain_radius=0.0), dict(voxel_um=0.0)])
def test_bad_arguments_raise_input_error(kwargs):
    kwargs = {"shape": (8, 8, 8), **kwargs}
    with pytest.raises(InputError):
        simulate_soil(**kwargs)


def test_simulated_pairs_draw_the_grain_radius_in_the_asked_range(tmp_path):
    """``workflow.simulate(grain_radius=(lo, hi))``: coarser grains, same volume seeds and degradations."""
    import json

    import nibabel as nib

    from workbench.tasks.sr import workflow

    def simulate(name, **kw):
        folder = tmp_path / name
        workflow.simulate(folder, kind="soil", scale=8, inplane=True, n=2, size=48, seed=5, **kw)
        hr = [np.asarray(nib.load(folder / f"hr_{i:03d}.nii.gz").dataobj) for i in range(2)]
        return hr, json.loads((folder / "pairs.json").read_text())["cases"]

    fine, fine_cases = simulate("fine", grain_radius=(2.0, 2.2))
    coarse, coarse_cases = simulate("coarse", grain_radius=(10.0, 12.0))
    default, default_cases = simulate("default")
    assert coarse_cases == fine_cases == default_cases  # the degradations do not depend on the radius
    for f, c in zip(fine, coarse):  # bigger grains: fewer edges per voxel
        assert np.abs(np.diff(c, axis=0)).mean() < 0.8 * np.abs(np.diff(f, axis=0)).mean()
    with pytest.raises(InputError, match="grain_radius"):
        workflow.simulate(tmp_path / "bad", kind="soil", n=1, size=32, grain_radius=(6.0, 2.0))
