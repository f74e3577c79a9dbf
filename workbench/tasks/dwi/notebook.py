"""Notebook helpers of the DWI task: the tutorials' phantom and config, checkpoint reuse, snapshot scoring.

The generic widgets (slice viewer, loss plot, background training, weight sliders,
attention viewer) are in :mod:`workbench.notebook_ui`; only notebooks import either.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from workbench.config import Config
from workbench.notebook_ui import FigurePanel, _Displayable
from workbench.training.events import Validation


def tutorial_setup(small: bool) -> tuple[dict, Config]:
    """Phantom arguments for ``simulate_dwi`` and a training config, tiny in CI, full size otherwise.

    Full size is the 64x64x32 multishell phantom and the default config; small is a
    (24, 24, 12) DTI phantom, base_filters 8, 16^3 patches, 20 steps. AMP is on in both.
    """
    cfg = Config().model_copy(deep=True)
    cfg.train.amp = True
    if not small:
        return {"shape": (64, 64, 32), "scheme": "multishell", "snr": 10.0, "seed": 0}, cfg
    cfg.model.base_filters, cfg.data.patch_size, cfg.data.batch_size = 8, 16, 2
    cfg.train.steps, cfg.train.val_every, cfg.train.checkpoint_every = 20, 10, 20
    return {"shape": (24, 24, 12), "scheme": "dti", "snr": 10.0, "seed": 0}, cfg


def reuse_checkpoint(path, cfg: Config, n_volumes: int):
    """A Denoiser from ``path`` (e.g. notebook 01's ``best.pt``) if its model and data settings are
    ``cfg``'s and it was trained for ``n_volumes`` volumes; None when missing, unreadable or different."""
    from workbench.inference import Denoiser

    try:
        den = Denoiser.from_checkpoint(path, device=cfg.train.device, amp=cfg.train.amp)
    except Exception:  # missing, truncated, or written by another version of the model
        return None
    same = all(getattr(den.config, k) == getattr(cfg, k) for k in ("model", "data"))
    return den if same and den.n_volumes == n_volumes else None


class SnapshotMonitor(_Displayable):
    """Training callback: at each validation, score a copy of the model against the clean reference.

    The copy is made with ``api.snapshot_denoiser`` on the training thread (training waits
    meanwhile); its plain predictions of ``volumes`` (before ``denoise``'s sigma-based
    blending) are compared with ``clean``:
    PSNR (dB) and edge sharpness ratio (mean 3D Sobel magnitude of prediction / of
    clean; < 1 blurrier, > 1 noisier than the truth). Dashed lines: the noisy input.
    """

    def __init__(self, noisy, clean, bvals, bvecs, mask, volumes: Sequence[int], trainer=None):
        from workbench.metrics import edge_sharpness, psnr

        self.noisy, self.bvals, self.bvecs, self.mask = noisy, bvals, bvecs, np.asarray(mask, bool)
        self.volumes = [int(j) for j in volumes]
        self.clean = np.asarray(clean)[..., self.volumes]
        self.data_range = float(self.clean[self.mask].max())
        self.ref_sharpness = edge_sharpness(self.clean, self.mask)
        sel = np.asarray(noisy)[..., self.volumes]
        self.noisy_scores = {"psnr": psnr(sel, self.clean, self.mask, self.data_range),
                             "edge_ratio": edge_sharpness(sel, self.mask) / self.ref_sharpness}
        self.trainer, self.subject, self.records = trainer, None, []
        self.panel = FigurePanel(1, 2, figsize=(10, 3))
        self.widget = self.panel.image
        self.redraw()

    def bind(self, trainer) -> "SnapshotMonitor":
        self.trainer = trainer
        return self

    def __call__(self, event) -> None:
        if isinstance(event, Validation):
            self.evaluate(event.step)

    def evaluate(self, step: int) -> dict:
        from workbench import api
        from workbench.metrics import edge_sharpness, psnr

        den = api.snapshot_denoiser(self.trainer)
        if self.subject is None:
            self.subject = den.prepare(self.noisy, self.bvals, self.bvecs, self.mask)
        pred = np.stack([np.clip(den.predict_volume(self.subject, j).numpy(), 0, None) * self.subject.scale
                         for j in self.volumes], axis=-1)
        rec = {"step": int(step), "psnr": psnr(pred, self.clean, self.mask, self.data_range),
               "edge_ratio": edge_sharpness(pred, self.mask) / self.ref_sharpness}
        self.records.append(rec)
        self.redraw()
        return rec

    def redraw(self) -> None:
        steps = [r["step"] for r in self.records]
        for ax, key, title in zip(self.panel.axes[0], ("psnr", "edge_ratio"),
                                  ("PSNR vs clean (dB, higher is better)", "edge sharpness / clean's (1 = same)")):
            ax.clear()
            ax.plot(steps, [r[key] for r in self.records], "o-", label="model snapshot")
            ax.axhline(self.noisy_scores[key], ls="--", color="gray", label="noisy input")
            if key == "edge_ratio":
                ax.axhline(1.0, ls=":", color="k", lw=0.8)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
            ax.legend(fontsize=7)
        self.panel.figure.tight_layout()
        self.panel.render()
