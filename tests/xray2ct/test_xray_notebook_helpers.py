"""The xray2ct task's notebook helpers (workbench.tasks.xray2ct.notebook), as notebook 08 uses them.

Everything on a 32^3 grid; widget callbacks are driven from code (``slider.value = x``).
The explorer tests skip where ipywidgets is not installed.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from workbench.tasks.xray2ct.geometry import default_geometry

SEED = 900_000_001


@pytest.fixture(scope="module")
def case():
    from workbench.tasks.xray2ct import workflow

    return workflow.sample_case(seed=SEED, size=32)


@pytest.fixture(scope="module")
def linear():
    from workbench.tasks.xray2ct.baselines import fit_linear
    from workbench.tasks.xray2ct.notebook import noisy_xrays
    from workbench.tasks.xray2ct.phantoms import simulate_phantom

    g = default_geometry(32)
    vols = [simulate_phantom(s, 32, g.fov_mm)[0] for s in (11, 12, 13, 14)]
    xrays = np.stack([noisy_xrays(v, g, g.photons, s) for s, v in enumerate(vols)])
    return fit_linear(vols, xrays, g, k=3, basis_grid=16)


@pytest.fixture
def plt():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_import_does_not_pull_in_ipywidgets():
    code = ("import sys, workbench.tasks.xray2ct.notebook\n"
            "print(','.join(m for m in ('ipywidgets', 'workbench.notebook_ui', 'napari') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def _marker(size=8, at=(6, 5, 7)):
    vol = np.zeros((size,) * 3, np.float32)
    vol[at] = 1.0
    return vol


@pytest.mark.parametrize("view, where", [
    ("axial", (2, 6)),       # z = 7 cut; y = 5 of 8 -> row 2 (anterior up); x = 6 -> column 6 (left on the right)
    ("coronal", (0, 6)),     # y = 5 cut; z = 7 -> row 0 (head up); x = 6 -> column 6
    ("sagittal", (0, 2)),    # x = 6 cut; z = 7 -> row 0; y = 5 -> column 2 (anterior on the left)
])
def test_ct_slice_orientation(view, where):
    from workbench.tasks.xray2ct.notebook import VIEWS, ct_slice

    vol = _marker()
    index = (6, 5, 7)[VIEWS[view]]
    img = ct_slice(vol, view, index)
    assert img.shape == (8, 8) and img[where] == 1.0 and img.sum() == 1.0


def test_ct_slice_on_a_finer_grid_is_at_the_same_place():
    from workbench.tasks.xray2ct.notebook import ct_slice, slice_mm

    fine = np.random.default_rng(0).normal(size=(16, 16, 16)).astype(np.float32)
    for view in ("axial", "coronal", "sagittal"):
        assert np.array_equal(ct_slice(fine, view, 3, size=8), ct_slice(fine, view, 7))
    assert slice_mm(3, 8, 240.0) == pytest.approx(slice_mm(7, 16, 240.0) - 240.0 / 32)   # fine 7: upper half of 3
    assert slice_mm(0, 64, 320.0) == pytest.approx(-157.5) and slice_mm(63, 64, 320.0) == pytest.approx(157.5)
    with pytest.raises(ValueError, match="outside"):
        ct_slice(fine, "axial", 8, size=8)


def test_noisy_xrays_match_sample_case_and_scale_with_dose(case):
    from workbench.tasks.xray2ct.geometry import project_hu
    from workbench.tasks.xray2ct.notebook import noisy_xrays

    g = case["geometry"]
    assert np.array_equal(noisy_xrays(case["ct"], g, g.photons, SEED), case["xrays"])
    clean = project_hu(case["ct"], g)
    assert np.array_equal(noisy_xrays(case["ct"], g, 0, SEED), clean)
    low, high = (np.abs(noisy_xrays(case["ct"], g, n, SEED) - clean).mean() for n in (1e3, 1e6))
    assert low > 10 * high > 0                        # Poisson: the error falls as 1 / sqrt(photons)


def test_xrays_are_drawn_like_the_slices(plt):
    """A dense block at the patient's left-anterior shows right in the AP image and left in the lateral one."""
    from workbench.tasks.xray2ct.notebook import noisy_xrays, show_xray

    g = default_geometry(16)
    hu = np.full((16,) * 3, -1000.0, np.float32)
    hu[12:15, 12:15, 5:8] = 1000.0                    # +x (left), +y (anterior), below the middle
    xr = noisy_xrays(hu, g, 0, 0)
    fig, axes = plt.subplots(1, 2)
    for k in range(2):
        show_xray(axes[k], xr, g, k, slice_at=("axial", 6))
    ap, lat = (axes[k].images[0].get_array() for k in range(2))
    assert np.unravel_index(np.argmax(ap), ap.shape)[1] >= 12      # AP: right half
    assert np.unravel_index(np.argmax(lat), lat.shape)[1] <= 3     # lateral: anterior on the left
    assert np.unravel_index(np.argmax(ap), ap.shape)[0] >= 8       # below the middle: lower rows
    line = axes[0].lines[0].get_ydata()[0]
    assert line == pytest.approx((6 + 0.5) * 240 / 16 - 120)       # the axial slice's height, mm


def test_compare_figure(case, plt):
    from workbench.tasks.xray2ct.notebook import compare_figure

    ct, g = case["ct"], case["geometry"]
    fine = np.repeat(np.repeat(np.repeat(ct, 2, 0), 2, 1), 2, 2)
    fig = compare_figure(ct, {"copy": ct, "flat": np.zeros_like(ct), "fine": fine + 10}, g.fov_mm, fine_reference=fine)
    assert len(fig.axes) == 5 * 6 + 2               # (2 references + 3 results) x 6 panels + 2 colour bars
    assert fig.axes[0].get_title() == "axial" and fig.axes[15].get_title() == "axial: difference"
    assert [fig.axes[6 * r].get_ylabel() for r in range(5)] == ["reference", "reference (64³)", "copy", "flat",
                                                                "fine (64³)"]
    assert not fig.axes[9].axison and np.allclose(fig.axes[15].images[0].get_array(), 0)
    diff = fig.axes[27].images[0].get_array()         # the fine result's axial difference: 10 HU everywhere
    assert diff.shape == (64, 64) and np.allclose(diff, 10)
    with pytest.raises(ValueError, match="fine_reference"):
        compare_figure(ct, {"fine": fine}, g.fov_mm)


def test_evaluate_all_and_metrics_table(case):
    from workbench.tasks.xray2ct.notebook import evaluate_all, metrics_table

    ct, g, xr = case["ct"], case["geometry"], case["xrays"]
    fine = np.repeat(np.repeat(np.repeat(ct, 2, 0), 2, 1), 2, 2)
    scores = evaluate_all({"truth": ct, "air": np.full_like(ct, -1000.0), "fine": fine}, ct, xr, g,
                          fine_reference=fine)
    assert scores["truth"]["ssim"] == pytest.approx(1.0) and scores["truth"]["mae_hu"] == 0
    assert scores["air"]["psnr"] < scores["truth"]["psnr"] and scores["air"]["reprojection_error"] > 0.5
    assert "reprojection_error" not in scores["fine"]                   # other grid than the X-rays'
    lines = metrics_table(scores).splitlines()
    assert lines[0].split()[:3] == ["method", "PSNR", "(dB)"] and set(lines[1]) == {"-"}
    assert lines[2].split()[0] == "truth" and lines[4].split()[-1] == "n/a"
    assert len({len(x) for x in lines}) == 1


class _FakePredictor:
    """A stand-in network: the phantom behind the X-rays plus a bias that grows with their noise."""

    def __init__(self, case):
        self.case, self.calls = case, 0

    def predict(self, xrays):
        self.calls += 1
        noise = float(np.abs(xrays - self.case["xrays"]).mean())
        return (self.case["ct"] + 1000.0 * noise).astype(np.float32)


def test_explorer_widgets_drive_reconstructions(case, linear):
    pytest.importorskip("ipywidgets")
    from workbench.tasks.xray2ct.notebook import METHODS, XrayExplorer

    fake = _FakePredictor(case)
    ex = XrayExplorer(fake, linear, size=32)
    renders = ex.panel.renders
    assert ex.method.value == "network" and ex.view.value == "coronal" and ex.slice.value == 16
    assert fake.calls == 1 and len(ex.records) == 1 and ex.records[0]["seed"] == SEED
    assert ex.records[0]["photons"] == case["geometry"].photons and ex.records[0]["ssim"] == pytest.approx(1.0)
    assert "PSNR" in ex.status.value and "Dice lungs" in ex.status.value

    ex.view.value = "axial"                     # redraw only
    ex.slice.value = 10
    assert ex.panel.renders == renders + 2 and len(ex.records) == 1

    ex.photons.value = 1e3                      # a tenth of a percent of the dose: noisier X-rays, worse network
    assert fake.calls == 2 and ex.records[-1]["photons"] == pytest.approx(1e3)
    assert ex.records[-1]["psnr"] < ex.records[0]["psnr"]
    ex.method.value = "ridge"
    ex.method.value = "network"                 # cached
    assert fake.calls == 2 and [r["method"] for r in ex.records] == ["network", "network", "ridge"]

    new = ex.sweep([1e3, 1e5])
    assert [(r["method"], r["photons"]) for r in new] == [("backprojection", 1e3), ("backprojection", 1e5),
                                                          ("atlas", 1e3), ("atlas", 1e5), ("ridge", 1e5)]
    atlas = [r for r in new if r["method"] == "atlas"]
    assert atlas[0]["psnr"] == atlas[1]["psnr"]    # the atlas ignores the X-rays
    assert {r["method"] for r in ex.records} == set(METHODS)

    ex.seed.value = SEED + 1                    # another phantom: reconstructed at the shown dose
    assert ex.records[-1]["seed"] == SEED + 1 and ex.records[-1]["method"] == "network"
    assert not np.array_equal(ex.case_of(SEED + 1)["ct"], case["ct"])


def test_explorer_needs_its_models(linear):
    pytest.importorskip("ipywidgets")
    from workbench.tasks.xray2ct.notebook import XrayExplorer

    with pytest.raises(ValueError, match="predictor"):
        XrayExplorer(None, linear, size=32)
    with pytest.raises(ValueError, match="linear"):
        XrayExplorer(methods=("atlas",), size=32)
    with pytest.raises(ValueError, match="some of"):
        XrayExplorer(linear=linear, methods=("tikhonov",), size=32)
    ex = XrayExplorer(methods=("backprojection",), size=32, view="sagittal")
    assert ex.method.value == "backprojection" and ex.records[0]["method"] == "backprojection"
