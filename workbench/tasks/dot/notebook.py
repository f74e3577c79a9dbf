"""Notebook helpers of the dot task: physics checks, comparison figures and a reconstruction explorer.

Only notebooks import this module (notebook ``09_nir_dot``). The functions need NumPy,
SciPy and matplotlib only; :class:`DotExplorer` imports ipywidgets (through
:mod:`workbench.notebook_ui`) when it is built, so ``import workbench.tasks.dot.notebook``
works without the notebook extras.

Optical-property volumes are (2, X, Y, Z) arrays, mu_a then mu_s' in 1/mm, as everywhere in
the task; slices are drawn axial (z), x to the right and y up.
"""

from __future__ import annotations

import math
import time
from typing import Mapping, Optional, Sequence

import numpy as np

from workbench.tasks.dot.physics import Geometry

CHANNELS = ("mu_a", "mu_s'")
CMAPS = ("magma", "viridis")
METHODS = ("tikhonov", "gauss-newton", "network")
TABLE_KEYS = ("rmse_mua", "rmse_mus", "ssim_mua", "ssim_mus", "contrast_mua", "contrast_mus", "loc_error_mua",
              "loc_error_mus", "dice_mua", "dice_mus", "crosstalk_mua_to_mus", "crosstalk_mus_to_mua")

__all__ = ["CHANNELS", "METHODS", "DotExplorer", "compare_figure", "largest_inclusion_slice", "metrics_table",
           "pair_distances", "point_source_profile", "random_pair_mask", "show_slice"]


# ----------------------------------------------------------------------------- small pieces
def largest_inclusion_slice(labels: np.ndarray, axis: int = 2) -> int:
    """Index along ``axis`` of the slice through the centroid of the largest inclusion (the middle if none)."""
    labels = np.asarray(labels)
    ids, counts = np.unique(labels[labels > 0], return_counts=True)
    if not len(ids):
        return labels.shape[axis] // 2
    biggest = ids[np.argmax(counts)]
    return int(round(float(np.argwhere(labels == biggest)[:, axis].mean())))


def random_pair_mask(shape: tuple[int, int], fraction: float, seed: int = 0) -> np.ndarray:
    """Boolean (S, D) mask keeping ``round(fraction * S * D)`` pairs (at least one), drawn with ``seed``."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    n = int(np.prod(shape))
    keep = max(1, int(round(fraction * n)))
    mask = np.zeros(n, bool)
    mask[np.random.default_rng(seed).permutation(n)[:keep]] = True
    return mask.reshape(shape)


def pair_distances(geometry: Geometry) -> np.ndarray:
    """(S, D) straight-line source-detector distances in mm."""
    return np.linalg.norm(geometry.sources_mm[:, None] - geometry.detectors_mm[None], axis=-1)


def point_source_profile(geometry: Geometry, frequency_hz: float = 0.0, background=None) -> dict:
    """The forward model's fluence of a unit point source in the body's centre, along +x, and the analytic one.

    The finite-volume system of :class:`~workbench.tasks.dot.physics.ForwardModel`
    (``M Phi = e_source``, homogeneous ``background`` = (mu_a, mu_s'), default the
    geometry's) is solved for a source in the body voxel nearest the origin; the fluence on
    the voxels along +x is returned with :func:`~workbench.tasks.dot.physics.infinite_medium_green`
    at the same distances. Returns ``r_mm`` (from the source voxel's centre, first
    neighbour on), ``model`` and ``analytic`` (complex), ``depth_mm`` (distance of each
    point to the body's side wall, where the Robin boundary pulls the model below the
    infinite medium).
    """
    from scipy.sparse.linalg import splu

    from workbench.tasks.dot.baselines import serial_blas
    from workbench.tasks.dot.physics import ForwardModel, homogeneous, infinite_medium_green

    mua, mus = geometry.background if background is None else background
    fm = ForwardModel(geometry, *homogeneous(geometry, (mua, mus)))
    coords = geometry.coordinates().reshape(3, -1)[:, geometry.body_mask.ravel()].T     # (N, 3) mm
    src = int(geometry.optode_voxels(np.zeros((1, 3)))[0])
    rhs = np.zeros(fm.n, complex if frequency_hz else float)
    rhs[src] = 1.0
    with serial_blas():
        lu = splu(fm.matrix(frequency_hz), permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0,
                  options={"SymmetricMode": True})   # as ForwardModel factorises it
        phi = lu.solve(rhs)
    d = coords - coords[src]
    line = np.flatnonzero((np.abs(d[:, 1]) < 1e-6) & (np.abs(d[:, 2]) < 1e-6) & (d[:, 0] > 0))
    line = line[np.argsort(d[line, 0])]
    r = d[line, 0]
    analytic = infinite_medium_green(r, mua, mus, frequency_hz, geometry.refractive_index)
    depth = min(geometry.radii_mm[:2]) - np.hypot(coords[line, 0], coords[line, 1])
    return {"r_mm": r, "model": phi[line].astype(complex), "analytic": analytic, "depth_mm": depth}


def _masked_slice(vol: np.ndarray, body: np.ndarray, index: int, axis: int = 2) -> np.ndarray:
    img = np.where(np.take(body, index, axis=axis), np.take(vol, index, axis=axis), np.nan)
    return np.rot90(img)   # x to the right, y up


def _extent(geometry: Geometry, axis: int = 2) -> tuple[float, float, float, float]:
    half = geometry.grid / 2 * geometry.voxel_mm
    return (-half, half, -half, half)


def show_slice(ax, vol: np.ndarray, geometry: Geometry, index: int, *, axis: int = 2, cmap: str = "magma",
               vmin=None, vmax=None, labels: Optional[np.ndarray] = None, title: str = ""):
    """Draw slice ``index`` of one channel ``vol`` (X, Y, Z) inside the body on ``ax`` (mm axes); inclusion
    outlines from ``labels``. Returns the image artist."""
    ext = _extent(geometry, axis)
    im = ax.imshow(_masked_slice(vol, geometry.body_mask, index, axis), cmap=cmap, vmin=vmin, vmax=vmax, extent=ext)
    if labels is not None:
        lab = np.rot90(np.take(labels, index, axis=axis) > 0)
        if lab.any():
            ax.contour(np.flipud(lab).astype(float), levels=[0.5], colors="w", linewidths=0.8,
                       extent=ext, origin="lower")
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    return im


def _channel_range(reference: np.ndarray, body: np.ndarray, c: int) -> tuple[float, float]:
    v = reference[c][body]
    lo, hi = float(v.min()), float(v.max())
    pad = 0.05 * (hi - lo or abs(hi) or 1.0)
    return lo - pad, hi + pad


def compare_figure(reference: np.ndarray, results: Mapping[str, np.ndarray], geometry: Geometry, *,
                   labels: Optional[np.ndarray] = None, index: Optional[int] = None, axis: int = 2,
                   panel_size: float = 2.4):
    """A matplotlib figure: one row per channel, the phantom then each result, one colour range per row
    (the phantom's), the slice through the largest inclusion unless ``index`` is given."""
    import matplotlib.pyplot as plt

    index = largest_inclusion_slice(labels, axis) if index is None and labels is not None else (
        reference.shape[1 + axis] // 2 if index is None else index)
    cols = {"phantom": reference, **results}
    fig, axes = plt.subplots(2, len(cols), figsize=(panel_size * len(cols) + 0.8, 2 * panel_size), squeeze=False,
                             layout="constrained")
    body = geometry.body_mask
    for c in range(2):
        lo, hi = _channel_range(reference, body, c)
        for j, (name, mu) in enumerate(cols.items()):
            im = show_slice(axes[c, j], mu[c], geometry, index, axis=axis, cmap=CMAPS[c], vmin=lo, vmax=hi,
                            labels=labels, title=f"{name}: {CHANNELS[c]}")
        fig.colorbar(im, ax=axes[c, :], shrink=0.85, label=f"{CHANNELS[c]} (1/mm)")
    mm = (index - (reference.shape[1 + axis] - 1) / 2) * geometry.voxel_mm
    fig.suptitle(f"slice {'xyz'[axis]} = {index} ({mm:+.0f} mm); white: true inclusions", fontsize=10)
    return fig


def _fmt(v: float) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return "inf" if math.isinf(v) else f"{v:.3g}"


def metrics_table(scores: Mapping[str, Mapping[str, float]], keys: Sequence[str] = TABLE_KEYS,
                  labels: Optional[Mapping[str, str]] = None) -> str:
    """A plain-text table of one case's metrics: one row per metric, one column per method."""
    names = list(scores)
    labels = labels or {}
    rows = [["metric", *names]] + [[labels.get(k, k), *(_fmt(scores[n].get(k, float("nan"))) for n in names)]
                                   for k in keys]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the explorer
class DotExplorer:
    """Browse reconstructions of one case and see what losing source-detector pairs does to them.

    Parameters
    ----------
    case : dict
        :func:`~workbench.tasks.dot.workflow.sample_case` output (``geometry``, ``mu``, ``labels``, ``data``).
    results : dict of str to ndarray
        Reconstructions with all pairs, (2, X, Y, Z) each, by method name (e.g. the three of
        :data:`METHODS`); the dropdown picks one.
    predictor : DotPredictor, optional
        Needed to re-run ``"network"`` on a subset.
    rerun : sequence of str
        Methods the subset slider re-runs (``"network"`` and ``"tikhonov"`` take about a second
        or less per subset at grid 32 on a CPU; Gauss-Newton several seconds per iteration, so
        by default it is shown with all pairs only).

    Widgets: ``slice`` (z), ``channel`` (mu_a / mu_s'), ``method``, ``fraction`` (share of
    pairs kept) and ``seed`` (which random subset). Panels: the phantom, the method with
    all pairs, the method on the subset, and the RMSE of the shown channel against the share
    of pairs kept, one point per subset reconstructed so far (``records``; :meth:`sweep`
    adds several at once).
    """

    def __init__(self, case: dict, results: Mapping[str, np.ndarray], predictor=None, *,
                 rerun: Sequence[str] = ("network", "tikhonov"), fraction: float = 1.0, seed: int = 0,
                 panel_size: float = 2.6):
        import ipywidgets as W

        from workbench.notebook_ui import FigurePanel

        self.geometry: Geometry = case["geometry"]
        self.reference, self.labels, self.data = case["mu"], case["labels"], case["data"]
        self.results = {k: np.asarray(v) for k, v in results.items()}
        if not self.results:
            raise ValueError("results is empty: pass at least one reconstruction, e.g. {'network': mu}")
        self.predictor, self.rerun = predictor, tuple(rerun)
        if "network" in self.rerun and "network" in self.results and predictor is None:
            raise ValueError("re-running the network on a subset needs its predictor: pass predictor=")
        self.records: list[dict] = []
        self._cache: dict[tuple, np.ndarray] = {}
        self._scores: dict[str, dict] = {}
        self.subset: Optional[np.ndarray] = None
        self.last_seconds = 0.0
        grid = self.geometry.grid
        self.slice = W.IntSlider(value=largest_inclusion_slice(self.labels), min=0, max=grid - 1,
                                 description="slice (z)")
        self.channel = W.ToggleButtons(options=[(n, c) for c, n in enumerate(CHANNELS)], value=0,
                                       description="channel")
        first = "network" if "network" in self.results else next(iter(self.results))
        self.method = W.Dropdown(options=list(self.results), value=first, description="method")
        self.fraction = W.FloatSlider(value=fraction, min=0.05, max=1.0, step=0.05, description="pairs kept",
                                      continuous_update=False, readout_format=".0%")
        self.seed = W.IntSlider(value=seed, min=0, max=20, description="subset seed", continuous_update=False)
        self.status = W.HTML("")
        self.panel = FigurePanel(1, 4, figsize=(panel_size * 4 + 0.6, panel_size + 0.6))
        self._hold = False
        for w in (self.slice, self.channel):
            w.observe(lambda _c: None if self._hold else self.update(), names="value")
        for w in (self.method, self.fraction, self.seed):
            w.observe(lambda _c: None if self._hold else self.reconstruct(), names="value")
        self.widget = W.VBox([W.HBox([self.method, self.channel]), W.HBox([self.fraction, self.seed, self.slice]),
                              self.status, self.panel.image])
        self.reconstruct()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # -- computing ---------------------------------------------------------------
    def run_subset(self, method: str, fraction: float, seed: int = 0) -> Optional[np.ndarray]:
        """``method``'s reconstruction from a random ``fraction`` of the pairs (None if it is not re-run);
        cached, and recorded in ``records`` with its metrics."""
        from workbench.tasks.dot import workflow
        from workbench.tasks.dot.metrics import evaluate_dot

        if fraction >= 1.0:
            return self.results[method]
        if method not in self.rerun:
            return None
        key = (method, round(float(fraction), 4), int(seed))
        if key not in self._cache:
            mask = random_pair_mask(self.data.shape[1:], fraction, seed)
            t0 = time.perf_counter()
            mu, _ = workflow.reconstruct(method, self.data, self.geometry, mask, predictor=self.predictor)
            self.last_seconds = time.perf_counter() - t0
            self._cache[key] = mu
            g = self.geometry
            m = evaluate_dot(mu, self.reference, g.body_mask, inclusions=self.labels, background=g.background,
                             voxel_mm=g.voxel_mm)
            self.records.append({"method": method, "fraction": key[1], "seed": key[2], "pairs": int(mask.sum()),
                                 "seconds": self.last_seconds, **m})
        return self._cache[key]

    def sweep(self, fractions: Sequence[float], methods: Optional[Sequence[str]] = None, seed: int = 0) -> list[dict]:
        """Reconstruct every method of ``methods`` (default: those re-run) at each fraction; redraw; the new records."""
        n0 = len(self.records)
        for method in methods or [m for m in self.rerun if m in self.results]:
            for f in fractions:
                self.run_subset(method, f, seed)
        self.update()
        return self.records[n0:]

    def reconstruct(self) -> None:
        """Reconstruct the picked method from the picked subset (if not cached), then redraw."""
        self.status.value = f"reconstructing {self.method.value} from {self.fraction.value:.0%} of the pairs ..."
        self.subset = self.run_subset(self.method.value, self.fraction.value, self.seed.value)
        self.update()

    def score(self, method: str, fraction: float = 1.0, seed: int = 0) -> dict:
        """:func:`~workbench.tasks.dot.metrics.evaluate_dot` of a reconstruction shown (all pairs or a subset)."""
        from workbench.tasks.dot.metrics import evaluate_dot

        if fraction < 1.0:
            key = (method, round(float(fraction), 4), int(seed))
            return next(r for r in self.records if (r["method"], r["fraction"], r["seed"]) == key)
        if method not in self._scores:
            g = self.geometry
            self._scores[method] = evaluate_dot(self.results[method], self.reference, g.body_mask,
                                                inclusions=self.labels, background=g.background, voxel_mm=g.voxel_mm)
        return self._scores[method]

    # -- drawing -----------------------------------------------------------------
    def update(self) -> None:
        c, z, method, frac = self.channel.value, self.slice.value, self.method.value, self.fraction.value
        key = ("rmse_mua", "rmse_mus")[c]
        g = self.geometry
        lo, hi = _channel_range(self.reference, g.body_mask, c)
        axes = self.panel.axes[0]
        for ax in axes:
            ax.clear()
        full = self.results[method]
        n_pairs = g.n_pairs
        kept = max(1, int(round(frac * n_pairs)))
        sub_title = (f"{method}, {kept} pairs ({frac:.0%})" if self.subset is not None else
                     f"{method}: all pairs only\n(not re-run on subsets)")
        panels = [("phantom", self.reference, None), (f"{method}, all {n_pairs} pairs", full, 1.0),
                  (sub_title, self.subset, frac)]
        for ax, (title, mu, f) in zip(axes[:3], panels):
            if mu is None:
                ax.set_axis_off()
                ax.set_title(title, fontsize=8)
                continue
            extra = "" if f is None else f"\nRMSE {self.score(method, f, self.seed.value)[key]:.3g} /mm"
            show_slice(ax, mu[c], g, z, cmap=CMAPS[c], vmin=lo, vmax=hi, labels=self.labels,
                       title=title + extra)
        ax = axes[3]
        full_rmse = {m: self.score(m)[key] for m in self.results if m in self.rerun}
        curves = 0
        for i, m in enumerate(sorted({r["method"] for r in self.records} | set(full_rmse))):
            pts = sorted((r["fraction"], r[key]) for r in self.records
                         if r["method"] == m and r["seed"] == self.seed.value)
            if m in full_rmse:
                pts.append((1.0, full_rmse[m]))
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, "o-", ms=3, label=m, color=f"C{i}")
                curves += 1
        ax.axvline(frac, color="k", ls=":", lw=0.8)
        ax.set_xlabel("share of pairs kept", fontsize=8)
        ax.set_title(f"RMSE {CHANNELS[c]} (1/mm), subset seed {self.seed.value}", fontsize=8)
        ax.tick_params(labelsize=7)
        if curves:
            ax.legend(fontsize=7)
        self.panel.figure.suptitle(f"slice z = {z}: {CHANNELS[c]}", fontsize=9)
        self.panel.figure.tight_layout()
        self.panel.render()
        secs = f" ({self.last_seconds * 1e3:.0f} ms)" if self.subset is not None and frac < 1 else ""
        self.status.value = (f"{method} from {kept} of {n_pairs} pairs{secs}" if self.subset is not None
                             else f"{method} is shown with all pairs only")
