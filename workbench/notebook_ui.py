"""ipywidgets + matplotlib helpers for the Jupyter tutorials in ``notebooks/``.

Only notebooks import this module; nothing else in :mod:`workbench` does, so
``import workbench`` stays free of ipywidgets. Figures are drawn with
matplotlib's object-oriented API on an Agg canvas and shown as PNGs in an
``ipywidgets.Image``: safe from the training thread, no display or interactive
backend needed, the same in JupyterLab, VS Code and a headless CI kernel.
Code (and CI) drives the widgets as a user would: ``button.click()``,
``slider.value = 0.3``.
"""

from __future__ import annotations

import io
import os
import threading
import time
from typing import Optional, Sequence

import ipywidgets as W
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from workbench.training.events import Failed, Finished, StepEnd, Validation, WeightsChanged

AXES = {"axial (z)": 2, "coronal (y)": 1, "sagittal (x)": 0}


def small_mode(environ=None) -> bool:
    """True when the environment variable ``CI`` is set (and not 0/false/no): the tutorials then run tiny."""
    value = (os.environ if environ is None else environ).get("CI", "")
    return value.strip().lower() not in ("", "0", "false", "no")


class FigurePanel:
    """A matplotlib figure shown as a PNG in ``self.image``; ``render()`` redraws it (from any thread)."""

    def __init__(self, nrows: int = 1, ncols: int = 1, figsize=(8, 3)):
        self.figure = Figure(figsize=figsize, dpi=80)
        FigureCanvasAgg(self.figure)
        self.axes = self.figure.subplots(nrows, ncols, squeeze=False)
        self.image = W.Image(format="png")
        self.renders, self.last_render = 0, 0.0
        self._lock = threading.Lock()

    def render(self) -> None:
        with self._lock:
            buf = io.BytesIO()
            self.figure.savefig(buf, format="png")
            self.image.value = buf.getvalue()
            self.renders, self.last_render = self.renders + 1, time.monotonic()


class _Displayable:
    widget: W.Widget

    def _repr_mimebundle_(self, **kwargs):  # lets a cell end with the helper object itself
        return self.widget._repr_mimebundle_(**kwargs)


def _slice(vol: np.ndarray, axis: int, index: int) -> np.ndarray:
    return np.rot90(np.take(vol, index, axis=axis))  # rows = the other two axes, "up" at the top


def _image_axes(ax, cmap: str, **kw):
    ax.set_xticks([])
    ax.set_yticks([])
    return ax.imshow(np.zeros((2, 2)), cmap=cmap, **kw)


class SliceViewer(_Displayable):
    """Side-by-side panels of same-shaped (X, Y, Z) or (X, Y, Z, N) arrays, one slice at a time.

    ``reference`` names the ground truth: the other panels' titles then show the slice's
    PSNR/RMSE against it, inside ``mask`` (which also sets the colour range). ``symmetric``:
    range +-v around 0 in a diverging map (residuals); else [0, v] in grey.
    """

    def __init__(self, volumes: dict, *, reference: Optional[str] = None, mask=None, symmetric: bool = False,
                 cmap: Optional[str] = None, title: str = "", panel_size: float = 2.6):
        self.volumes = {k: np.asarray(v) for k, v in volumes.items()}
        shapes = {v.shape for v in self.volumes.values()}
        if len(shapes) != 1:
            raise ValueError(f"all volumes must have the same shape, got {sorted(shapes)}")
        self.shape = shapes.pop()
        if len(self.shape) not in (3, 4):
            raise ValueError(f"volumes must be 3D or 4D, got shape {self.shape}")
        if reference is not None and reference not in self.volumes:
            raise ValueError(f"reference {reference!r} is not one of {list(self.volumes)}")
        self.reference, self.symmetric, self.title = reference, symmetric, title
        self.mask = None if mask is None else np.asarray(mask, bool)
        self.cmap = cmap or ("RdBu_r" if symmetric else "gray")
        n_vol = self.shape[3] if len(self.shape) == 4 else 1
        self.axis = W.Dropdown(options=list(AXES.items()), value=2, description="view")
        self.index = W.IntSlider(value=self.shape[2] // 2, min=0, max=self.shape[2] - 1, description="slice")
        self.volume = W.IntSlider(value=0, min=0, max=n_vol - 1, description="volume",
                                  layout=W.Layout(display=None if n_vol > 1 else "none"))
        self.panel = FigurePanel(1, len(self.volumes), figsize=(panel_size * len(self.volumes), panel_size + 0.4))
        self.artists = {name: _image_axes(ax, self.cmap) for ax, name in zip(self.panel.axes[0], self.volumes)}
        self._hold = False
        self.axis.observe(self._on_axis, names="value")
        for w in (self.index, self.volume):
            w.observe(lambda change: None if self._hold else self.update(), names="value")
        self.widget = W.VBox([W.HBox([self.axis, self.index, self.volume]), self.panel.image])
        self.update()

    def _on_axis(self, change) -> None:
        size = self.shape[change["new"]]
        self._hold = True  # one redraw, not one per slider change
        self.index.max = max(self.index.max, size - 1)  # so that the new middle is never clamped
        self.index.value, self.index.max = size // 2, size - 1
        self._hold = False
        self.update()

    def _vol(self, name: str) -> np.ndarray:
        v = self.volumes[name]
        return v[..., self.volume.value] if v.ndim == 4 else v

    def slice_of(self, name: str) -> np.ndarray:
        """The slice shown for ``name`` (as drawn: rotated so that rows run top to bottom)."""
        return _slice(self._vol(name), self.axis.value, self.index.value)

    def _range(self) -> tuple[float, float]:
        inside = self.mask if self.mask is not None and self.mask.any() else slice(None)
        if self.symmetric:
            v = max(float(np.percentile(np.abs(self._vol(n)[inside]), 99.5)) for n in self.volumes)
            return -(v or 1.0), v or 1.0
        name = self.reference or next(iter(self.volumes))
        return 0.0, float(np.percentile(self._vol(name)[inside], 99.5)) or 1.0

    def slice_metrics(self, name: str) -> Optional[dict]:
        """PSNR (dB, range = max of the reference volume in the mask) and RMSE of this slice vs the reference."""
        from workbench.metrics import psnr, rmse

        if self.reference is None or name == self.reference:
            return None
        ref3 = self._vol(self.reference)
        m3 = self.mask if self.mask is not None else np.ones(ref3.shape, bool)
        sl = [slice(None)] * 3
        sl[self.axis.value] = slice(self.index.value, self.index.value + 1)
        m = m3[tuple(sl)]
        if not m.any():
            return None
        dr = float(ref3[m3].max()) or 1.0
        p, r = self._vol(name)[tuple(sl)], ref3[tuple(sl)]
        return {"psnr": psnr(p, r, m, data_range=dr), "rmse": rmse(p, r, m)}

    def update(self) -> None:
        vmin, vmax = self._range()
        for ax, (name, artist) in zip(self.panel.axes[0], self.artists.items()):
            img = self.slice_of(name)
            artist.set_data(img)
            artist.set_extent((-0.5, img.shape[1] - 0.5, img.shape[0] - 0.5, -0.5))
            artist.set_clim(vmin, vmax)
            m = self.slice_metrics(name)
            ax.set_title(name if m is None else f"{name}\nPSNR {m['psnr']:.1f} dB, RMSE {m['rmse']:.1f}", fontsize=9)
        self.panel.figure.suptitle(f"{self.title}  (volume {self.volume.value}, slice {self.index.value})", fontsize=10)
        self.panel.render()


class LossPlot(_Displayable):
    """Training callback: live plot of the total loss, validation loss and every loss term.

    Pass it in ``make_trainer(..., callbacks=[plot])``. Left panel: weighted total and
    validation loss; right panel: each term (unweighted), with dotted lines where a
    weight was changed. ``history`` holds the numbers.
    """

    def __init__(self, min_interval: float = 1.0):
        self.panel, self.min_interval = FigurePanel(1, 2, figsize=(10, 3.2)), min_interval
        self.status = W.HTML("waiting for the first step")
        self.history = {"step": [], "loss": [], "val_step": [], "val_loss": [], "terms": {}, "weight_changes": []}
        self._lock = threading.Lock()
        self.finished: Optional[Finished] = None
        self.widget = W.VBox([self.status, self.panel.image])

    def __call__(self, event) -> None:
        h, e = self.history, event
        with self._lock:
            if isinstance(e, StepEnd):
                h["step"].append(e.step)
                h["loss"].append(e.loss)
                for name, value in e.terms.items():
                    for lst, x in zip(h["terms"].setdefault(name, ([], [])), (e.step, value)):
                        lst.append(x)
                w = ", ".join(f"{k} {v:g}" for k, v in e.weights.items() if v)
                self.status.value = (f"step {e.step}/{e.total_steps} | loss {e.loss:.4g} | weights: {w} | "
                                     f"ETA {e.eta_s:.0f} s")
            elif isinstance(e, Validation):
                h["val_step"].append(e.step)
                h["val_loss"].append(e.loss)
            elif isinstance(e, WeightsChanged):
                h["weight_changes"].append((e.step, e.name, e.old, e.new))
            elif isinstance(e, Finished):
                self.finished = e
                self.status.value = f"finished at step {e.step} ({e.reason}), best validation loss {e.best_loss:.4g}"
            elif isinstance(e, Failed):
                self.status.value = f"<b>training failed</b> at step {e.step}: {e.error}"
        if isinstance(e, (StepEnd, Validation, Finished, Failed)):
            self.redraw(force=isinstance(e, (Finished, Failed)))

    def redraw(self, force: bool = True) -> None:
        if not force and time.monotonic() - self.panel.last_render < self.min_interval:  # at most 1 per interval
            return
        with self._lock:
            h = {k: list(v) for k, v in self.history.items() if k != "terms"}
            h["terms"] = {k: (list(s), list(v)) for k, (s, v) in self.history["terms"].items()}
        left, right = self.panel.axes[0]
        for ax in (left, right):
            ax.clear()
            ax.set_xlabel("step")
        left.plot(h["step"], h["loss"], label="train loss (weighted sum)", lw=1)
        if h["val_step"]:
            left.plot(h["val_step"], h["val_loss"], "o-", label="validation loss")
        for name, (steps, values) in sorted(h["terms"].items()):
            right.plot(steps, values, label=name, lw=1)
        for step, name, old, new in h["weight_changes"]:
            right.axvline(step, ls=":", color="k", lw=0.8)
            right.annotate(f"{name} {old:g}->{new:g}", (step, 1.0), xycoords=("data", "axes fraction"),
                           fontsize=7, rotation=90, va="top", ha="right")
        for ax, title in ((left, "loss"), (right, "loss terms (unweighted)")):
            ax.set_title(title, fontsize=9)
            if ax.lines:
                ax.set_yscale("log")
                ax.legend(fontsize=7)
        self.panel.figure.tight_layout()
        self.panel.render()


class BackgroundTraining(_Displayable):
    """Start/Stop buttons that run ``trainer.fit()`` in a worker thread.

    ``start()`` / the Start button launch it; ``stop()`` / the Stop button ask the trainer
    to stop (honoured within a step); ``wait_for_step(n)`` blocks until step ``n`` is
    done; ``wait()`` joins the thread and returns the ``TrainResult`` (re-raising a failure).
    """

    def __init__(self, trainer, resume: bool = False):
        self.trainer, self.resume, self.result, self.step, self.ended = trainer, resume, None, 0, False
        self.error: Optional[BaseException] = None
        self.thread: Optional[threading.Thread] = None
        self._cond = threading.Condition()
        trainer.callbacks.append(self._on_event)  # the trainer keeps its callbacks in a plain list
        self.start_button = W.Button(description="Start training", icon="play", button_style="success")
        self.stop_button = W.Button(description="Stop", icon="stop", disabled=True)
        self.start_button.on_click(lambda _b: self.start())
        self.stop_button.on_click(lambda _b: self.stop())
        self.status = W.HTML("not started")
        self.widget = W.HBox([self.start_button, self.stop_button, self.status])

    @property
    def running(self) -> bool:
        return self.thread is not None and self.thread.is_alive()

    def start(self) -> bool:
        if self.running:
            return False
        self.result, self.error, self.ended = None, None, False
        self.start_button.disabled, self.stop_button.disabled = True, False
        self.status.value = "running"
        self.thread = threading.Thread(target=self._run, name="workbench-training", daemon=True)
        self.thread.start()
        return True

    def _run(self) -> None:
        try:
            self.result = self.trainer.fit(resume=self.resume)
            self.status.value = f"done: {self.result.steps_done} steps ({self.result.reason})"
        except BaseException as e:  # reported by wait(); the trainer also sent a Failed event
            self.error = e
            self.status.value = f"<b>failed</b>: {e}"
        finally:
            self.start_button.disabled, self.stop_button.disabled = False, True
            with self._cond:
                self.ended = True
                self._cond.notify_all()

    def _on_event(self, event) -> None:
        if isinstance(event, StepEnd):
            with self._cond:
                self.step = event.step
                self._cond.notify_all()

    def stop(self) -> None:
        self.trainer.request_stop()

    def wait_for_step(self, step: int, timeout: Optional[float] = None) -> bool:
        """Block until ``step`` steps are done (True) or training ended / timed out before (False)."""
        with self._cond:
            self._cond.wait_for(lambda: self.step >= step or self.ended or self.thread is None, timeout)
            return self.step >= step

    def wait(self, timeout: Optional[float] = None):
        if self.thread is None:
            raise RuntimeError("training was not started: call start() or click the Start button")
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise TimeoutError(f"training still running after {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


class LossWeightSliders(_Displayable):
    """One slider per loss term; moving one calls ``weights.set(name, value)`` (the trainer's live weights)."""

    def __init__(self, weights, terms: Optional[Sequence[str]] = None, max_value: float = 1.0, step: float = 0.01):
        from workbench.losses import LOSSES

        self.weights = weights
        current = weights.get()
        self.sliders = {}
        for name in terms or list(LOSSES):
            value = float(current.get(name, 0.0))
            s = W.FloatSlider(value=value, min=0.0, max=max(max_value, value), step=step, description=name,
                              continuous_update=False, readout_format=".2f")
            s.observe(lambda change, name=name: self.weights.set(name, change["new"]), names="value")
            self.sliders[name] = s
        self.widget = W.VBox(list(self.sliders.values()))


def edge_maps(volumes: np.ndarray) -> np.ndarray:
    """``workbench.inference.edge_map`` of every volume of a (X, Y, Z, N) array, stacked back to 4D."""
    from workbench.inference import edge_map

    volumes = np.asarray(volumes, dtype=np.float32)
    return np.stack([edge_map(volumes[..., j]) for j in range(volumes.shape[-1])], axis=-1)


class AttentionViewer(_Displayable):
    """CBAM spatial attention of a :class:`~workbench.inference.Denoiser`, overlaid on an image.

    Pickers: CBAM block, volume index, slice and overlay opacity. Maps are computed per
    volume on first use (``denoiser.attention_maps(subject, j)``) and cached.
    """

    def __init__(self, denoiser, subject, background: np.ndarray, *, volume: int = 0, cmap: str = "inferno"):
        self.denoiser, self.subject = denoiser, subject
        self.background = np.asarray(background)
        self._cache: dict[int, dict] = {}
        blocks = list(self.maps(volume))
        if not blocks:
            raise ValueError("this model has no CBAM blocks (model.use_cbam is False): nothing to show")
        z = self.background.shape[2]
        self.block = W.Dropdown(options=blocks, value=blocks[0], description="block")
        self.volume = W.IntSlider(value=volume, min=0, max=self.background.shape[3] - 1, description="volume")
        self.index = W.IntSlider(value=z // 2, min=0, max=z - 1, description="slice (z)")
        self.alpha = W.FloatSlider(value=0.5, min=0.0, max=1.0, step=0.05, description="opacity")
        self.stretch = W.Checkbox(value=True, description="stretch colours to the map's range")
        self.panel = FigurePanel(1, 2, figsize=(7, 3.6))
        a0, a1 = self.panel.axes[0]
        self.base_artist = _image_axes(a0, "gray")
        self.overlay_artist = a0.imshow(np.zeros((2, 2)), cmap=cmap, vmin=0, vmax=1, alpha=0.5)
        self.map_artist = _image_axes(a1, cmap, vmin=0, vmax=1)
        self.panel.figure.colorbar(self.map_artist, ax=a1, fraction=0.046)
        for w in (self.block, self.volume, self.index, self.alpha, self.stretch):
            w.observe(lambda change: self.update(), names="value")
        self.widget = W.VBox([W.HBox([self.block, self.volume, self.stretch]), W.HBox([self.index, self.alpha]),
                              self.panel.image])
        self.update()

    def maps(self, j: int) -> dict:
        if j not in self._cache:
            self._cache[j] = self.denoiser.attention_maps(self.subject, j)
        return self._cache[j]

    def current_map(self) -> np.ndarray:
        """The 2D attention slice shown (block, volume and slice as picked)."""
        return _slice(self.maps(self.volume.value)[self.block.value], 2, self.index.value)

    def update(self) -> None:
        bg = _slice(self.background[..., self.volume.value], 2, self.index.value)
        att, full = self.current_map(), self.maps(self.volume.value)[self.block.value]
        lo, hi = (float(full.min()), float(full.max())) if self.stretch.value else (0.0, 1.0)
        ext = (-0.5, bg.shape[1] - 0.5, bg.shape[0] - 0.5, -0.5)
        self.base_artist.set_data(bg)
        self.base_artist.set_clim(0, float(np.percentile(bg, 99.5)) or 1.0)
        for artist in (self.base_artist, self.overlay_artist, self.map_artist):
            artist.set_extent(ext)
        for artist in (self.overlay_artist, self.map_artist):
            artist.set_data(att)
            artist.set_clim(lo, max(hi, lo + 1e-6))
        self.overlay_artist.set_alpha(self.alpha.value)
        a0, a1 = self.panel.axes[0]
        a0.set_title(f"volume {self.volume.value}, slice {self.index.value}", fontsize=9)
        a1.set_title(f"{self.block.value}: colours {lo:.2f} to {hi:.2f}", fontsize=9)
        self.panel.render()
