"""The NIR-DOT panel's plot of measured against predicted boundary data (matplotlib in Qt)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from qtpy.QtWidgets import QWidget

from napari_plugin._widgets._dot_work import DotResult
from napari_plugin._widgets._loss_plot import FG, dark_canvas, style_dark_axes


class BoundaryPlot(QWidget):
    """Measured against predicted Rytov data per source-detector pair: CW log-amplitude and modulated phase."""

    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.figure, self.canvas = dark_canvas(self, (4.2, 2.5), 230, left=0.15, right=0.97, bottom=0.2, top=0.8,
                                               wspace=0.45)
        self.axes = self.figure.subplots(1, 2)
        self.n_points = 0
        self.rms: dict[str, float] = {}
        self.clear()

    def _style(self, ax, title: str, unit: str) -> None:
        style_dark_axes(ax, labelsize=7)
        ax.set_title(title, color=FG, fontsize=8)
        ax.set_xlabel(f"measured {unit}", color=FG, fontsize=8)
        ax.set_ylabel(f"predicted {unit}", color=FG, fontsize=8)

    def clear(self) -> None:
        for ax, (title, unit) in zip(self.axes, self._panels()):
            self._style(ax, title, unit)
        self.figure.suptitle("Measured vs predicted boundary data\n(after a reconstruction)", color=FG, fontsize=8)
        self.n_points = 0
        self.canvas.draw_idle()

    @staticmethod
    def _panels():
        return (("CW log-amplitude", "ln(A/A0)"), ("modulated phase", "(deg)"))

    def show_result(self, result: DotResult, frequency_mhz: float) -> None:
        use = np.ones(result.measured.shape[1:], bool) if result.mask is None else np.asarray(result.mask, bool)
        pairs = [(result.measured[0][use], result.predicted[0][use]),
                 (np.degrees(result.measured[2][use]), np.degrees(result.predicted[2][use]))]
        titles = (("CW log-amplitude", "ln(A/A0)"), (f"{frequency_mhz:g} MHz phase", "(deg)"))
        self.rms = {}
        for ax, (x, y), (title, unit), color in zip(self.axes, pairs, titles, ("#ffb000", "#4cc9f0")):
            self._style(ax, title, unit)
            lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            pad = 0.05 * (hi - lo or 1.0)
            ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="#9aa0a6", linewidth=0.8, linestyle="--")
            ax.scatter(x, y, s=5, color=color, alpha=0.6, linewidths=0)
            ax.set_xlim(lo - pad, hi + pad)
            ax.set_ylim(lo - pad, hi + pad)
            rms = float(np.sqrt(np.mean((x - y) ** 2)))
            self.rms[title] = rms
            ax.text(0.03, 0.95, f"rms misfit {rms:.3g}", transform=ax.transAxes, va="top", ha="left", fontsize=7,
                    color=FG)
        self.n_points = int(use.sum())
        self.figure.suptitle(f"{result.method}: measured vs predicted boundary data\n"
                             f"({self.n_points} source-detector pairs, relative to the homogeneous medium)",
                             color=FG, fontsize=8)
        self.canvas.draw_idle()
