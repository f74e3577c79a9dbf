"""Fixtures for the napari plugin tests: a real viewer (``make_napari_viewer``) under Xvfb, PyQt6.

Run: ``QT_API=pyqt6 xvfb-run -a python -m pytest tests/napari -q -p no:cacheprovider``
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("QT_API", "pyqt6")


def _why_not() -> str:
    """Why the plugin tests cannot run here ('' when they can)."""
    import importlib.util

    missing = [m for m in ("napari", "pytestqt", "qtpy") if importlib.util.find_spec(m) is None]
    if missing:
        return f"missing {', '.join(missing)} (pip install 'napari>=0.5' PyQt6 pytest-qt)"
    headless = not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if headless and os.environ.get("QT_QPA_PLATFORM", "") not in ("offscreen", "minimal"):
        return "no display: run under xvfb-run (Qt would abort the whole test run)"
    return ""


SKIP_REASON = _why_not()
if SKIP_REASON:  # collect nothing here rather than crash or fail the core's test run
    collect_ignore_glob = ["test_*.py"]


def pytest_report_header(config):
    return f"napari plugin tests: {'skipped, ' + SKIP_REASON if SKIP_REASON else 'enabled'}"


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The Train panel sets torch's (process-wide) thread count; give the other tests theirs back."""
    import torch

    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture
def sample_viewer(make_napari_viewer):
    """A viewer with the plugin's sample data (noisy DWI, clean reference, mask) opened."""
    viewer = make_napari_viewer()
    viewer.open_sample("recon-workbench", "dwi_phantom")
    return viewer


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """best.pt/last.pt of a 3-step run on the sample phantom, trained through the core (no GUI)."""
    from workbench.api import make_trainer
    from workbench.config import Config
    from workbench.data.nifti import DWISeries

    from napari_plugin._sample_data import _phantom

    p = _phantom()
    cfg = Config().model_copy(deep=True)
    cfg.data.patch_size, cfg.data.batch_size, cfg.model.base_filters = 8, 2, 8
    cfg.train.steps, cfg.train.val_every, cfg.train.amp = 3, 3, False
    out = tmp_path_factory.mktemp("tiny_run")
    trainer = make_trainer([DWISeries(p.noisy, p.affine, bvals=p.bvals, bvecs=p.bvecs)], out, cfg, masks=[p.mask])
    result = trainer.fit()
    return result.best_checkpoint or result.last_checkpoint
