"""The notebook helpers (workbench.notebook_ui), the notebooks' jupytext twins, and the core's boundary.

Widget callbacks are driven from code (``button.click()``, ``slider.value = x``), as the
notebooks do in CI. The UI tests skip where the notebook extras (ipywidgets, jupytext)
are not installed; the boundary tests always run.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"


# --------------------------------------------------------------------------- boundary
def test_import_workbench_does_not_import_ipywidgets():
    code = ("import sys, workbench, workbench.api, workbench.inference, workbench.metrics, workbench.baselines\n"
            "print(','.join(m for m in ('ipywidgets', 'workbench.notebook_ui', 'IPython') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_no_core_module_imports_notebook_ui():
    """Only the notebook helpers themselves (notebook_ui, a task's notebook.py) may import ipywidgets helpers."""
    offenders = [str(p.relative_to(ROOT)) for p in (ROOT / "workbench").rglob("*.py")
                 if p.name not in ("notebook_ui.py", "notebook.py") and re.search(r"\bnotebook_ui\b", p.read_text())]
    assert offenders == []


def test_small_mode_reads_ci():
    pytest.importorskip("ipywidgets")
    from workbench.notebook_ui import small_mode

    assert small_mode({"CI": "true"}) and small_mode({"CI": "1"})
    assert not small_mode({}) and not small_mode({"CI": ""}) and not small_mode({"CI": "false"})


def test_tutorial_setup_small_and_full():
    pytest.importorskip("ipywidgets")
    from workbench.config import Config
    from workbench.tasks.dwi.notebook import tutorial_setup

    args, cfg = tutorial_setup(True)
    assert args["shape"] == (24, 24, 12) and args["scheme"] == "dti"
    assert cfg.model.base_filters == 8 and cfg.train.steps == 20 and cfg.train.amp is True
    args, cfg = tutorial_setup(False)
    assert args["shape"] == (64, 64, 32) and args["scheme"] == "multishell"
    assert cfg.model == Config().model and cfg.train.steps == Config().train.steps and cfg.train.amp is True


# --------------------------------------------------------------------------- viewers
@pytest.fixture
def ui():
    pytest.importorskip("ipywidgets")
    import workbench.notebook_ui as ui

    return ui


def test_figure_panel_renders_png(ui):
    panel = ui.FigurePanel()
    panel.axes[0, 0].plot([0, 1], [1, 0])
    panel.render()
    assert bytes(panel.image.value).startswith(b"\x89PNG") and panel.renders == 1


def test_loss_plot_throttles_live_redraws(ui):
    from workbench.training.events import StepEnd

    plot = ui.LossPlot(min_interval=60.0)
    for step in (1, 2, 3):
        plot(StepEnd(step, 3, 1.0, {"mse": 1.0}, 1e-3, 1.0, {"mse": 1.0}, 0.0, 0.0))
    assert plot.panel.renders == 1 and plot.history["step"] == [1, 2, 3]
    plot.redraw()
    assert plot.panel.renders == 2


def test_slice_viewer_follows_its_sliders(ui, rng):
    clean = rng.random((6, 7, 5, 3)).astype(np.float32) + 1
    noisy = clean + 0.1 * rng.standard_normal(clean.shape).astype(np.float32)
    mask = np.ones(clean.shape[:3], bool)
    v = ui.SliceViewer({"noisy": noisy, "clean": clean}, reference="clean", mask=mask)
    assert v.index.value == 2 and v.index.max == 4 and v.volume.max == 2
    renders = v.panel.renders
    v.volume.value = 2
    v.index.value = 1
    assert v.panel.renders == renders + 2
    np.testing.assert_array_equal(v.artists["noisy"].get_array(), np.rot90(noisy[:, :, 1, 2]))
    m = v.slice_metrics("noisy")
    assert np.isfinite(m["psnr"]) and m["rmse"] > 0 and v.slice_metrics("clean") is None
    assert "PSNR" in v.panel.axes[0, 0].get_title()
    v.axis.value = 0  # sagittal: the slice slider now runs over x
    assert v.index.max == 5 and v.index.value == 3
    np.testing.assert_array_equal(v.slice_of("clean"), np.rot90(clean[3, :, :, 2]))


def test_slice_viewer_symmetric_range_and_errors(ui, rng):
    resid = rng.standard_normal((5, 5, 4)).astype(np.float32)
    v = ui.SliceViewer({"a": resid, "b": -resid}, symmetric=True)
    lo, hi = v.artists["a"].get_clim()
    assert lo == -hi and hi > 0 and v.volume.layout.display == "none"
    with pytest.raises(ValueError, match="same shape"):
        ui.SliceViewer({"a": resid, "b": resid[:4]})
    with pytest.raises(ValueError, match="reference"):
        ui.SliceViewer({"a": resid}, reference="clean")


def test_edge_maps_stacks_edge_map(ui, rng):
    from workbench.inference import edge_map

    vol = rng.random((6, 6, 6, 2)).astype(np.float32)
    e = ui.edge_maps(vol)
    assert e.shape == vol.shape
    np.testing.assert_allclose(e[..., 1], edge_map(vol[..., 1]))


# --------------------------------------------------------------------------- training widgets
def _events():
    from workbench.training.events import Finished, StepEnd, Validation, WeightsChanged

    w = {"mse": 1.0, "edge": 0.05}
    yield StepEnd(1, 3, 0.5, {"mse": 0.4, "edge": 2.0}, 1e-3, 1.0, w, 0.1, 0.2)
    yield WeightsChanged(2, "ssim", 0.0, 0.2)
    yield StepEnd(2, 3, 0.4, {"mse": 0.3, "edge": 1.5, "ssim": 0.5}, 1e-3, 1.0, {**w, "ssim": 0.2}, 0.2, 0.1)
    yield Validation(2, 0.45, {"mse": 0.3}, 0.45, True, {})
    yield StepEnd(3, 3, 0.3, {"mse": 0.2, "edge": 1.0, "ssim": 0.4}, 1e-3, 1.0, {**w, "ssim": 0.2}, 0.3, 0.0)
    yield Finished(3, 0.45, "completed", None, None)


def test_loss_plot_records_and_draws_every_term(ui):
    plot = ui.LossPlot(min_interval=0.0)
    for event in _events():
        plot(event)
    h = plot.history
    assert h["step"] == [1, 2, 3] and h["val_step"] == [2] and h["weight_changes"] == [(2, "ssim", 0.0, 0.2)]
    assert h["terms"]["ssim"] == ([2, 3], [0.5, 0.4]) and h["terms"]["mse"][1] == [0.4, 0.3, 0.2]
    left, right = plot.panel.axes[0]
    lines = {line.get_label(): line for line in right.get_lines()}
    assert {"mse", "edge", "ssim"} <= set(lines)
    assert list(lines["edge"].get_ydata()) == [2.0, 1.5, 1.0]
    assert "finished at step 3" in plot.status.value and plot.finished.reason == "completed"
    assert bytes(plot.panel.image.value).startswith(b"\x89PNG")


def test_loss_weight_sliders_set_the_live_weights(ui):
    from workbench.losses import LOSSES, LossWeights

    weights = LossWeights({"mse": 1.0, "edge": 0.05})
    s = ui.LossWeightSliders(weights)
    assert set(s.sliders) == set(LOSSES) and s.sliders["edge"].value == 0.05
    s.sliders["edge"].value = 0.3
    s.sliders["fft"].value = 0.1
    assert weights.get() == {"mse": 1.0, "edge": 0.3, "fft": 0.1}
    assert [(c["name"], c["new"]) for c in weights.history] == [("edge", 0.3), ("fft", 0.1)]


class FakeTrainer:
    """Emits a StepEnd per step until stopped or done; fails on request."""

    def __init__(self, steps=1000, fail=False):
        self.callbacks, self.steps, self.fail = [], steps, fail
        self._stop = threading.Event()

    def request_stop(self):
        self._stop.set()

    def fit(self, resume=False):
        from workbench.training.events import StepEnd

        step = 0
        while step < self.steps and not self._stop.is_set():
            step += 1
            for cb in self.callbacks:
                cb(StepEnd(step, self.steps, 1.0, {}, 1e-3, 1.0, {}, 0.0, 0.0))
            self._stop.wait(0.002)
            if self.fail and step == 3:
                raise RuntimeError("boom")
        from workbench.training.trainer import TrainResult

        return TrainResult(step, 1.0, "stopped" if self._stop.is_set() else "completed", None, None)


def test_background_training_buttons(ui):
    run = ui.BackgroundTraining(FakeTrainer())
    with pytest.raises(RuntimeError, match="not started"):
        run.wait()
    run.start_button.click()
    assert run.running and run.start_button.disabled and not run.stop_button.disabled
    assert not run.start()  # a second start while running is ignored
    assert run.wait_for_step(5, timeout=30)
    run.stop_button.click()
    result = run.wait(timeout=30)
    assert result.reason == "stopped" and result.steps_done >= 5 and not run.running
    assert not run.start_button.disabled and run.stop_button.disabled and "done" in run.status.value


def test_background_training_reports_failures(ui):
    run = ui.BackgroundTraining(FakeTrainer(fail=True))
    run.start()
    t0 = time.monotonic()
    assert not run.wait_for_step(100, timeout=30)  # ended before step 100: returns at once
    assert time.monotonic() - t0 < 10
    with pytest.raises(RuntimeError, match="boom"):
        run.wait(timeout=30)
    assert "failed" in run.status.value


# --------------------------------------------------------------------------- real trainer, tiny
@pytest.fixture(scope="module")
def tiny():
    pytest.importorskip("ipywidgets")
    from workbench import api
    from workbench.config import Config
    from workbench.data.nifti import DWISeries
    from workbench.data.phantoms import simulate_dwi

    ph = simulate_dwi(shape=(12, 12, 8), scheme="dti", snr=10.0, seed=1)
    cfg = Config().model_copy(deep=True)
    cfg.model.base_filters, cfg.data.patch_size, cfg.data.batch_size = 4, 8, 1
    cfg.train.steps, cfg.train.val_every, cfg.train.val_batches = 2, 1, 1
    series = DWISeries(ph.noisy, ph.affine, bvals=ph.bvals, bvecs=ph.bvecs)
    return ph, cfg, lambda callbacks=(): api.make_trainer([series], None, cfg, masks=[ph.mask], callbacks=callbacks)


def test_snapshot_monitor_scores_each_validation(ui, tiny):
    ph, cfg, make = tiny
    plot = ui.LossPlot(min_interval=0.0)
    from workbench.tasks.dwi.notebook import SnapshotMonitor

    monitor = SnapshotMonitor(ph.noisy, ph.clean, ph.bvals, ph.bvecs, ph.mask, volumes=[3, 5])
    trainer = make([plot, monitor])
    monitor.bind(trainer)
    run = ui.BackgroundTraining(trainer)
    sliders = ui.LossWeightSliders(trainer.loss_weights)
    sliders.sliders["edge"].value = 0.2  # before the first step: used from step 1 on
    run.start_button.click()
    result = run.wait(timeout=300)
    assert result.steps_done == 2 and [r["step"] for r in monitor.records] == [1, 2]
    assert all(np.isfinite(r["psnr"]) and r["edge_ratio"] > 0 for r in monitor.records)
    assert monitor.noisy_scores["edge_ratio"] > 0
    assert plot.history["step"] == [1, 2] and plot.history["val_step"] == [1, 2]
    assert plot.history["weight_changes"] == [(1, "edge", 0.05, 0.2)]
    ydata = monitor.panel.axes[0, 0].get_lines()[0].get_ydata()
    np.testing.assert_allclose(ydata, [r["psnr"] for r in monitor.records])


def test_attention_viewer_pickers(ui, tiny):
    from workbench import api

    ph, cfg, make = tiny
    den = api.snapshot_denoiser(make())  # untrained is enough to check the plumbing
    subject = den.prepare(ph.noisy, ph.bvals, ph.bvecs, ph.mask)
    v = ui.AttentionViewer(den, subject, ph.noisy, volume=2)
    assert set(v.block.options) == set(v.maps(2))
    v.block.value = v.block.options[-1]
    v.volume.value = 4
    v.index.value = 1
    expected = np.rot90(den.attention_maps(subject, 4)[v.block.value][:, :, 1])
    np.testing.assert_allclose(v.current_map(), expected, atol=1e-6)
    np.testing.assert_allclose(v.map_artist.get_array(), expected, atol=1e-6)
    v.alpha.value = 0.8
    assert v.overlay_artist.get_alpha() == 0.8 and set(v._cache) == {2, 4}
    full = v.maps(4)[v.block.value]
    assert v.map_artist.get_clim() == pytest.approx((full.min(), full.max()))  # stretched by default
    v.stretch.value = False
    assert v.map_artist.get_clim() == (0.0, 1.0) and v.overlay_artist.get_clim() == (0.0, 1.0)

    cfg2 = cfg.model_copy(deep=True)
    cfg2.model.use_cbam = False
    from workbench.data.nifti import DWISeries

    plain = api.snapshot_denoiser(api.make_trainer([DWISeries(ph.noisy, ph.affine, bvals=ph.bvals, bvecs=ph.bvecs)],
                                                   None, cfg2, masks=[ph.mask]))
    with pytest.raises(ValueError, match="no CBAM"):
        ui.AttentionViewer(plain, plain.prepare(ph.noisy, ph.bvals, ph.bvecs, ph.mask), ph.noisy)


# --------------------------------------------------------------------------- notebooks
def _pairs():
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.py"))


def test_every_notebook_has_its_jupytext_twin():
    ipynbs = {p.stem for p in NOTEBOOKS.glob("*.ipynb")}
    pys = {p.stem for p in _pairs()}
    assert pys and ipynbs == pys


@pytest.mark.parametrize("py", _pairs(), ids=lambda p: p.stem)
def test_notebook_matches_its_py_and_carries_only_expected_outputs(py):
    jupytext = pytest.importorskip("jupytext")
    import nbformat

    from_py = jupytext.read(py)
    ipynb = nbformat.read(py.with_suffix(".ipynb"), as_version=4)
    assert [(c.cell_type, c.source) for c in from_py.cells] == [(c.cell_type, c.source) for c in ipynb.cells], \
        f"{py.name} and its .ipynb differ: run python notebooks/sync_notebooks.py"
    assert ipynb.metadata.get("kernelspec", {}).get("name") == "python3"
    checked = 0
    for cell in ipynb.cells:
        if cell.cell_type != "code":
            continue
        if "# NBVAL_CHECK_OUTPUT" in cell.source:
            checked += 1
            assert cell.outputs and cell.execution_count, "a checked cell needs its expected output (sync --execute)"
            assert all(o.output_type == "stream" for o in cell.outputs)
        else:
            assert not cell.outputs and cell.execution_count is None, "commit notebooks without outputs"
    assert checked >= 1
