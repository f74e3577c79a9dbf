"""Notebook helper of the sr task: an SR3 explorer (steps and samples sliders, side-by-side panels).

Only notebooks import this module (it uses ipywidgets through :mod:`workbench.notebook_ui`).
"""

from __future__ import annotations

from typing import Optional

import ipywidgets as W
import numpy as np

from workbench.notebook_ui import FigurePanel, _Displayable, _image_axes
from workbench.resample import upsample

PANELS = ("LR", "bicubic", "regression", "SR3 mean", "SR3 sample", "SR3 std", "HR truth")


class SR3Explorer(_Displayable):
    """Sample SR3 on an LR stack and compare, slice by slice, with bicubic, a regression network and the truth.

    Parameters
    ----------
    lr, hr, bicubic, regression : ndarray
        (X, Y, Z) LR stack and (sX, sY, Z) HR-grid volumes (``regression`` may be None).
    predictor : SR3Predictor
        The diffusion model (``SR3Predictor.default()`` is the shipped soil x8 one).
    steps, samples : int
        Initial DDIM steps and K; the sliders change them, the Sample button reruns.

    ``result`` holds the last :class:`~workbench.tasks.sr.sr3_predictor.SR3Result` (with the K
    samples); the "sample" slider browses them, so the sample-to-sample variation is visible.
    """

    def __init__(self, lr, hr, bicubic, regression, predictor, *, steps: int = 20, samples: int = 4,
                 seed: int = 0, panel_size: float = 2.3):
        import torch

        self.lr, self.hr, self.bicubic = np.asarray(lr), np.asarray(hr), np.asarray(bicubic)
        self.regression = None if regression is None else np.asarray(regression)
        self.predictor, self.seed = predictor, seed
        s = predictor.scale
        with torch.no_grad():
            self.lr_on_hr = upsample(torch.from_numpy(self.lr)[None, None], s, "nearest")[0, 0].numpy()
        self.steps = W.IntSlider(value=steps, min=1, max=100, description="DDIM steps")
        self.samples = W.IntSlider(value=samples, min=1, max=16, description="samples K")
        self.button = W.Button(description="Sample", button_style="primary")
        self.progress = W.IntProgress(value=0, min=0, max=1, description="sampling")
        self.slice = W.IntSlider(value=self.hr.shape[2] // 2, min=0, max=self.hr.shape[2] - 1, description="slice")
        self.sample_index = W.IntSlider(value=0, min=0, max=0, description="sample")
        self.panel = FigurePanel(1, len(PANELS), figsize=(panel_size * len(PANELS), panel_size + 0.5))
        self.artists = {name: _image_axes(ax, "magma" if name == "SR3 std" else "gray")
                        for ax, name in zip(self.panel.axes[0], PANELS)}
        self.result = None
        self.button.on_click(lambda _: self.sample())
        for w in (self.slice, self.sample_index):
            w.observe(lambda _: self.update(), names="value")
        self.widget = W.VBox([W.HBox([self.steps, self.samples, self.button, self.progress]),
                              W.HBox([self.slice, self.sample_index]), self.panel.image])
        self.update()

    def sample(self):
        """Run SR3 with the sliders' steps and K on every slice of the stack; redraw."""
        def tick(done: int, total: int) -> None:
            self.progress.max, self.progress.value = total, done

        self.result = self.predictor.predict(self.lr, steps=self.steps.value, samples=self.samples.value,
                                             seed=self.seed, keep_samples=True, progress=tick)
        self.sample_index.max = self.samples.value - 1
        self.update()
        return self.result

    def volumes(self) -> dict[str, Optional[np.ndarray]]:
        r = self.result
        return {"LR": self.lr_on_hr, "bicubic": self.bicubic, "regression": self.regression,
                "SR3 mean": None if r is None else r.mean,
                "SR3 sample": None if r is None else r.samples[min(self.sample_index.value, len(r.samples) - 1)],
                "SR3 std": None if r is None else r.std, "HR truth": self.hr}

    def psnr(self, name: str) -> Optional[float]:
        """PSNR (dB) of the current slice of ``name`` against the truth (data range of the truth's slice)."""
        from workbench.metrics import psnr

        v = self.volumes()[name]
        if v is None or name in ("SR3 std", "HR truth"):
            return None
        z = self.slice.value
        ref = self.hr[:, :, z:z + 1]
        return float(psnr(v[:, :, z:z + 1], ref, data_range=float(ref.max() - ref.min()) or 1.0))

    def update(self) -> None:
        z = self.slice.value
        lo, hi = np.percentile(self.hr, [0.5, 99.5])
        for ax, (name, vol) in zip(self.panel.axes[0], self.volumes().items()):
            artist = self.artists[name]
            img = np.zeros(self.hr.shape[:2]) if vol is None else np.rot90(vol[:, :, z])
            artist.set_data(img)
            artist.set_extent((-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5))
            if name == "SR3 std":
                artist.set_clim(0.0, float(img.max()) or 1.0)
            else:
                artist.set_clim(lo, hi)
            p = self.psnr(name)
            title = name if vol is not None else f"{name}\n(press Sample)"
            ax.set_title(title if p is None else f"{name}\n{p:.1f} dB", fontsize=9)
        self.panel.render()
