"""Live loss plot (matplotlib's Qt canvas): one line per loss term, the total, the held-out estimate,
and a vertical marker wherever a loss weight was changed during training.

Events only append numbers; the figure is redrawn at most every ``REDRAW_MS`` so a
fast training loop cannot flood the GUI thread.
"""

from __future__ import annotations

import math
from typing import Optional

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QSizePolicy, QVBoxLayout, QWidget

REDRAW_MS = 1000
BG, FG, GRID = "#262930", "#f0f1f2", "#414851"
TERM_LABELS = {
    "l1": "L1", "mse": "MSE", "rmse": "RMSE", "charbonnier": "Charbonnier", "edge": "edge (3D Sobel)",
    "gradient": "gradient", "ssim": "SSIM loss", "multiscale": "multi-scale", "fft": "frequency (FFT)",
    "perceptual": "perceptual (your features)", "diffusion": "diffusion (denoising)",
    "projection": "projection consistency",
}


def dark_canvas(widget: QWidget, figsize: tuple[float, float], min_height: int, **margins):
    """A matplotlib figure and its Qt canvas filling ``widget``, in napari's dark colours.

    ``margins`` go to ``subplots_adjust``: fixed margins, since an automatic layout engine
    re-measures every label on each draw (slow).
    """
    from matplotlib.backends.backend_qtagg import FigureCanvasQTAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=figsize, dpi=90, facecolor=BG)
    figure.subplots_adjust(**margins)
    canvas = FigureCanvasQTAgg(figure)
    canvas.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
    canvas.setMinimumHeight(min_height)
    lay = QVBoxLayout(widget)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(canvas)
    return figure, canvas


def style_dark_axes(ax, labelsize: int = 8) -> None:
    """Clear ``ax`` and give it the dark background, grid and light ticks of :func:`dark_canvas`."""
    ax.clear()
    ax.set_facecolor(BG)
    for spine in ax.spines.values():
        spine.set_color(GRID)
    ax.tick_params(colors=FG, labelsize=labelsize)
    ax.grid(True, color=GRID, linewidth=0.5)


class LossPlot(QWidget):
    def __init__(self, parent: Optional[QWidget] = None):
        super().__init__(parent)
        self.figure, self.canvas = dark_canvas(self, (4.0, 2.8), 280, left=0.17, right=0.97, bottom=0.16, top=0.76)
        self.ax = self.figure.add_subplot(111)
        self._timer = QTimer(self)
        self._timer.setInterval(REDRAW_MS)
        self._timer.timeout.connect(self._redraw_if_dirty)
        self.reset()

    # ------------------------------------------------------------------ data
    def reset(self) -> None:
        self.steps: list[int] = []
        self.total: list[float] = []
        self.terms: dict[str, list[tuple[int, float]]] = {}
        self.heldout: list[tuple[int, float]] = []
        self.markers: list[tuple[int, str]] = []
        self._lines: dict = {}
        self._drawn_markers = 0
        self._legend_dirty = True
        self._style_axes()
        self._placeholder = self.ax.text(0.5, 0.5, "The loss curves appear here\nonce training starts",
                                         ha="center", va="center", color=FG, fontsize=9,
                                         transform=self.ax.transAxes)
        self._dirty = False
        self.canvas.draw_idle()

    def _style_axes(self) -> None:
        ax = self.ax
        style_dark_axes(ax)
        ax.set_xlabel("training step", color=FG, fontsize=9)
        ax.set_ylabel("loss (log scale)", color=FG, fontsize=9)

    def start(self) -> None:
        self._timer.start()

    def stop(self) -> None:
        self._timer.stop()
        self._redraw_if_dirty()

    def add_step(self, ev) -> None:
        """A ``StepEnd``: the total loss and each (unweighted) term."""
        if self.steps and ev.step <= self.steps[-1]:  # a resumed run replays no steps, but be safe
            keep = [i for i, s in enumerate(self.steps) if s < ev.step]
            self.steps, self.total = [self.steps[i] for i in keep], [self.total[i] for i in keep]
        self.steps.append(int(ev.step))
        self.total.append(float(ev.loss))
        for name, value in ev.terms.items():
            self.terms.setdefault(name, []).append((int(ev.step), float(value)))
        self._dirty = True

    def add_validation(self, ev) -> None:
        value = ev.terms.get("heldout_mse", ev.loss)
        self.heldout.append((int(ev.step), float(value)))
        self._dirty = True

    def mark_weight_change(self, ev) -> None:
        """A ``WeightsChanged``: a vertical line at the step from which the new weight applies."""
        label = TERM_LABELS.get(ev.name, ev.name)
        self.markers.append((int(ev.step), f"{label} {ev.old:g}→{ev.new:g}"))
        self._dirty = True

    # ------------------------------------------------------------------ drawing
    def _redraw_if_dirty(self) -> None:
        if self._dirty and not self.canvas.visibleRegion().isEmpty():  # hidden or scrolled away: later
            self._redraw()

    def showEvent(self, event) -> None:
        super().showEvent(event)
        if self._dirty:
            self._redraw()

    def _line(self, key: str, label: str, **style):
        line = self._lines.get(key)
        if line is None:
            (line,) = self.ax.plot([], [], label=label, **style)
            self._lines[key] = line
            self._legend_dirty = True
        return line

    def _redraw(self) -> None:
        """Update the existing artists (cheap), then let Qt repaint when idle."""
        self._dirty = False
        if not self.steps:
            return
        ax = self.ax
        if self._placeholder is not None:
            self._placeholder.remove()
            self._placeholder = None
        self._line("total", "total (weighted)", color="white", linewidth=1.6).set_data(self.steps, self.total)
        for name, pts in sorted(self.terms.items()):
            self._line(name, TERM_LABELS.get(name, name), linewidth=1.0).set_data(
                [p[0] for p in pts], [p[1] for p in pts])
        if self.heldout:
            self._line("heldout", "held-out error (MSE + σ²)", color="#ffd166", marker="o", linestyle="--",
                       markersize=4, linewidth=1.0).set_data([p[0] for p in self.heldout],
                                                              [p[1] for p in self.heldout])
        for step, text in self.markers[self._drawn_markers:]:
            ax.axvline(step, color="#ff6b6b", linestyle=":", linewidth=1.2)
            ax.annotate(text, xy=(step, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -2),
                        textcoords="offset points", rotation=90, va="top", ha="left", fontsize=7, color="#ff9b9b")
        self._drawn_markers = len(self.markers)
        values = list(self.total) + [v for pts in self.terms.values() for _, v in pts] + [v for _, v in self.heldout]
        log = all(v > 0 and math.isfinite(v) for v in values)
        if ax.get_yscale() != ("log" if log else "linear"):
            from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

            ax.set_yscale("log" if log else "linear")
            if log:  # ticks at 1, 2, 5 x 10^k in plain numbers (0.002, 0.005, 0.01)
                ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0), numticks=12))
                ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
                ax.yaxis.set_minor_formatter(NullFormatter())
            ax.set_ylabel("loss (log scale)" if log else "loss", color=FG, fontsize=9)
        ax.relim()
        ax.autoscale_view(scalex=False)
        ax.set_xlim(0, max(self.steps[-1], 1) * 1.02 + 0.5)
        if self._legend_dirty:
            ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=2, fontsize=7, frameon=False,
                      labelcolor=FG, borderaxespad=0.0, handlelength=1.5)
            self._legend_dirty = False
        self.canvas.draw_idle()
