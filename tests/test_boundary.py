"""The core must stay free of GUI toolkits so every front end shares it."""

import subprocess
import sys

GUI_MODULES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari", "ipywidgets", "magicgui", "vispy")


def test_import_workbench_pulls_in_no_gui():
    code = (
        "import sys, workbench, workbench.api, workbench.cli, workbench.inference, workbench.models, "
        "workbench.losses, workbench.metrics, workbench.training.trainer, workbench.baselines, workbench.demo, "
        "workbench.tiling, workbench.resample, workbench.tasks.sr.task, workbench.tasks.sr.workflow, "
        "workbench.tasks.sr.predictor, workbench.tasks.sr.metrics, workbench.tasks.dwi.task, workbench.tasks.dwi.cli, "
        "workbench.tasks.sr.diffusion, workbench.tasks.sr.sr3_predictor, workbench.models.sr3, workbench.training.ema\n"
        f"bad = [m for m in {GUI_MODULES!r} if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"GUI modules imported by the core: {out.stdout}"
