"""The dot task's notebook helpers (workbench.tasks.dot.notebook), as notebook 09 uses them.

Everything on a 16^3 grid; widget callbacks are driven from code (``slider.value = x``).
The explorer tests skip where ipywidgets is not installed.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from workbench.tasks.dot.physics import default_geometry


@pytest.fixture(scope="module")
def geometry():
    return default_geometry(16)


@pytest.fixture(scope="module")
def case():
    from workbench.tasks.dot import workflow

    return workflow.sample_case(grid=16)


def test_import_does_not_pull_in_ipywidgets():
    code = ("import sys, workbench.tasks.dot.notebook\n"
            "print(','.join(m for m in ('ipywidgets', 'workbench.notebook_ui', 'napari') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_largest_inclusion_slice():
    from workbench.tasks.dot.notebook import largest_inclusion_slice

    labels = np.zeros((10, 10, 10), np.int16)
    assert largest_inclusion_slice(labels) == 5
    labels[1:3, 1:3, 1:3] = 1          # small, centred on z = 1.5
    labels[5:9, 5:9, 6:9] = 2          # large, z 6..8
    assert largest_inclusion_slice(labels) == 7
    assert largest_inclusion_slice(labels, axis=0) == 6


def test_random_pair_mask_counts_and_seeds():
    from workbench.tasks.dot.notebook import random_pair_mask

    m = random_pair_mask((16, 16), 0.25, seed=3)
    assert m.dtype == bool and m.shape == (16, 16) and m.sum() == 64
    assert np.array_equal(m, random_pair_mask((16, 16), 0.25, seed=3))
    assert not np.array_equal(m, random_pair_mask((16, 16), 0.25, seed=4))
    assert random_pair_mask((16, 16), 1e-6).sum() == 1 and random_pair_mask((16, 16), 1.0).all()
    with pytest.raises(ValueError):
        random_pair_mask((16, 16), 0.0)


def test_pair_distances(geometry):
    from workbench.tasks.dot.notebook import pair_distances

    d = pair_distances(geometry)
    assert d.shape == (len(geometry.sources_mm), len(geometry.detectors_mm))
    s, k = 3, 7
    assert d[s, k] == pytest.approx(np.linalg.norm(geometry.sources_mm[s] - geometry.detectors_mm[k]))
    assert d.min() > 0 and d.max() <= 2 * np.hypot(geometry.radii_mm[0], geometry.radii_mm[2])


@pytest.mark.parametrize("frequency", [0.0, 140e6])
def test_point_source_profile_matches_the_infinite_medium_away_from_source_and_wall(frequency):
    from workbench.tasks.dot.notebook import point_source_profile

    g = default_geometry(32)
    p = point_source_profile(g, frequency)
    assert np.all(np.diff(p["r_mm"]) > 0) and p["r_mm"][0] == pytest.approx(g.voxel_mm)
    ok = (p["r_mm"] >= 3 * g.voxel_mm) & (p["depth_mm"] >= 10)
    assert ok.sum() >= 4
    ratio = p["model"][ok] / p["analytic"][ok]
    assert np.all(np.abs(np.abs(ratio) - 1) < 0.1)             # finite volumes on 2 mm voxels: a few %
    assert np.all(np.abs(np.angle(ratio)) < np.deg2rad(2.0))      # of up to 40 degrees
    near_wall = p["depth_mm"] < 3                                  # the Robin boundary takes light away
    assert np.all(np.abs(p["model"][near_wall]) < np.abs(p["analytic"][near_wall]))


def test_metrics_table_layout():
    from workbench.tasks.dot.notebook import metrics_table

    text = metrics_table({"a": {"rmse_mua": 0.00123, "dice_mua": float("nan")}, "bb": {"rmse_mua": 1.0}},
                         keys=("rmse_mua", "dice_mua", "rmse_mus"))
    lines = text.splitlines()
    assert lines[0].split() == ["metric", "a", "bb"] and set(lines[1]) == {"-"}
    assert lines[2].split() == ["rmse_mua", "0.00123", "1"]
    assert lines[3].split() == ["dice_mua", "n/a", "n/a"] and lines[4].split() == ["rmse_mus", "n/a", "n/a"]
    assert len({len(x) for x in lines}) == 1


def test_compare_figure(case):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from workbench.tasks.dot.notebook import compare_figure

    g = case["geometry"]
    fig = compare_figure(case["mu"], {"copy": case["mu"], "flat": np.ones_like(case["mu"])}, g, labels=case["labels"])
    assert len(fig.axes) == 2 * 3 + 2          # 2 channels x (phantom + 2 results) + 2 colour bars
    import matplotlib.pyplot as plt

    plt.close(fig)


class _FakePredictor:
    """A stand-in network: the truth, fainter the fewer pairs it gets; records the masks it was given."""

    def __init__(self, mu, background):
        self.mu, self.bg, self.masks = mu, np.asarray(background).reshape(2, 1, 1, 1), []

    def predict(self, data, mask=None):
        self.masks.append(None if mask is None else mask.copy())
        keep = 1.0 if mask is None else mask.mean()
        return (self.bg + keep * (self.mu - self.bg)).astype(np.float32)


def test_explorer_reruns_network_and_tikhonov_on_subsets(case):
    pytest.importorskip("ipywidgets")
    from workbench.tasks.dot import workflow
    from workbench.tasks.dot.notebook import DotExplorer, largest_inclusion_slice

    g = case["geometry"]
    fake = _FakePredictor(case["mu"], g.background)
    tik, _ = workflow.reconstruct("tikhonov", case["data"], g)
    gn = np.asarray(case["mu"]) * 1.0
    ex = DotExplorer(case, {"tikhonov": tik, "gauss-newton": gn, "network": fake.predict(case["data"])}, fake)
    renders = ex.panel.renders
    assert ex.method.value == "network" and ex.slice.value == largest_inclusion_slice(case["labels"])
    assert ex.records == [] and ex.subset is ex.results["network"]

    ex.fraction.value = 0.5                     # re-runs the network on 128 random pairs
    assert fake.masks[-1] is not None and fake.masks[-1].sum() == g.n_pairs // 2
    assert len(ex.records) == 1 and ex.records[0]["pairs"] == g.n_pairs // 2
    assert ex.panel.renders > renders
    assert ex.records[0]["rmse_mua"] > ex.score("network")["rmse_mua"]     # the fake fades with fewer pairs

    ex.method.value = "tikhonov"                # the same subset, Tikhonov without the missing rows
    assert [r["method"] for r in ex.records] == ["network", "tikhonov"]
    assert ex.subset.shape == case["mu"].shape and not np.array_equal(ex.subset, tik)

    ex.method.value = "gauss-newton"            # not re-run: shown with all pairs only
    assert ex.subset is None and len(ex.records) == 2 and "all pairs only" in ex.status.value

    n = len(fake.masks)
    ex.method.value = "network"                 # cached: no new prediction
    assert len(fake.masks) == n

    new = ex.sweep([0.25, 0.5])
    assert [(r["method"], r["pairs"]) for r in new] == [("network", 64), ("tikhonov", 64)]   # 0.5: cached
    ex.channel.value = 1
    ex.slice.value = 3
    ex.seed.value = 1                           # another subset of the same size
    assert len(ex.records) == 5 and ex.records[-1]["seed"] == 1


def test_explorer_needs_a_predictor_to_rerun_the_network(case):
    pytest.importorskip("ipywidgets")
    from workbench.tasks.dot.notebook import DotExplorer

    with pytest.raises(ValueError, match="predictor"):
        DotExplorer(case, {"network": case["mu"]})
    with pytest.raises(ValueError, match="empty"):
        DotExplorer(case, {})
    ex = DotExplorer(case, {"network": case["mu"]}, rerun=())
    ex.fraction.value = 0.3
    assert ex.subset is None and ex.records == []
