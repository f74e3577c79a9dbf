"""Choices of the Train panel in plain words, and the machine facts it shows (no Qt here)."""

from __future__ import annotations

import os
import tempfile
import time
import uuid
from pathlib import Path

MODEL_LABELS = {"multiscale": "Multi-scale detail network", "denoiser": "Single-level U-Net (lightest)",
                "rrdb_sr": "Residual dense network + PixelShuffle (SR)",
                "sr3": "SR3 diffusion, 8x in-plane (SR, with uncertainty)",
                "progressive": "Coarse-to-fine network", "frequency": "Frequency band network"}
SCHEDULES = [("One-cycle (warm up, then decay)", "onecycle"), ("Cosine decay", "cosine"),
             ("Lower when the loss stalls", "plateau"), ("Constant", "none")]
AMP_CHOICES = [("Automatic", "auto"), ("On", True), ("Off", False)]
DEVICES = [("Automatic (GPU if available)", "auto"), ("CPU", "cpu"), ("CUDA GPU", "cuda")]
WEIGHT_APPLY_MS = 250
UI_REFRESH_MS = 500


def default_threads() -> int:
    """All cores but one: the GUI thread keeps a core, and small machines avoid oversubscription."""
    return max(1, (os.cpu_count() or 2) - 1)


def cuda_description() -> str:
    import torch

    if torch.cuda.is_available():
        return f"CUDA GPU found: {torch.cuda.get_device_name(0)}"
    return "No CUDA GPU found: training runs on the CPU"


def new_run_folder() -> str:
    """A fresh folder name under the system temp folder (created when training starts, not before)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return str(Path(tempfile.gettempdir()) / f"recon-workbench-run-{stamp}-{uuid.uuid4().hex[:6]}")
