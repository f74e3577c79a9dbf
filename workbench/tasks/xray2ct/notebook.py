"""Notebook helpers of the xray2ct task: slices in three views, X-rays, comparison figures and an explorer.

Only notebooks import this module (notebook ``08_xray_to_ct``). The functions need NumPy and
matplotlib only; :class:`XrayExplorer` imports ipywidgets (through :mod:`workbench.notebook_ui`)
when it is built, so ``import workbench.tasks.xray2ct.notebook`` works without the notebook extras.

Volumes are (X, Y, Z) HU arrays as everywhere in the task (X toward the patient's left, Y
anterior, Z toward the head); X-rays are (2, nu, nv) line integrals, AP (u, v) = (X, Z) and
lateral (Y, Z). Drawn as a radiologist reads them: axial slices seen from the feet (patient's
left on the right of the image, anterior up), coronal slices and the AP X-ray seen from the front
(head up), sagittal slices and the lateral X-ray with anterior on the left. Axes are in mm.
"""

from __future__ import annotations

import math
import time
from typing import Mapping, Optional, Sequence

import numpy as np

VIEWS = {"axial": 2, "coronal": 1, "sagittal": 0}          # view -> the volume axis it cuts
#: view -> (horizontal axis, vertical axis, anterior-left flip) of the drawn plane
_PLANE = {"axial": (0, 1, False), "coronal": (0, 2, False), "sagittal": (1, 2, True)}
AXIS_LABELS = {0: "x (mm), patient's left", 1: "y (mm), anterior", 2: "z (mm), head"}
METHODS = ("backprojection", "atlas", "ridge", "network")
HU_WINDOW = (-1000.0, 1000.0)
DIFF_HU = 500.0
TABLE_KEYS = ("psnr", "ssim", "mae_hu", "dice_lung", "dice_bone", "reprojection_error")

__all__ = ["METHODS", "VIEWS", "XrayExplorer", "compare_figure", "ct_slice", "evaluate_all", "metrics_table",
           "noisy_xrays", "show_ct", "show_xray", "slice_mm"]


# ----------------------------------------------------------------------------- slices and X-rays
def _index_on(n: int, index: int, size: Optional[int]) -> int:
    """``index`` of a ``size`` grid -> the slice of an ``n`` grid at the same place (e.g. 64 -> 128: 2i + 1)."""
    size = size or n
    if not 0 <= index < size:
        raise ValueError(f"slice {index} is outside 0..{size - 1}")
    return min(n - 1, int((index + 0.5) * n / size))


def _orient(img: np.ndarray, view: str) -> np.ndarray:
    """A (horizontal, vertical) plane -> display rows (vertical axis up), anterior left for sagittal."""
    a = np.asarray(img).T[::-1]
    return a[:, ::-1] if _PLANE[view][2] else a


def _extent(view: str, fov_mm: Sequence[float]) -> tuple[float, float, float, float]:
    h, v, flip = _PLANE[view]
    hh, hv = fov_mm[h] / 2, fov_mm[v] / 2
    return (hh, -hh, -hv, hv) if flip else (-hh, hh, -hv, hv)


def ct_slice(vol: np.ndarray, view: str, index: int, size: Optional[int] = None) -> np.ndarray:
    """Slice ``index`` (of a ``size`` grid; default the volume's) of ``vol`` in ``view``, as drawn."""
    axis = VIEWS[view]
    return _orient(np.take(vol, _index_on(vol.shape[axis], index, size), axis=axis), view)


def slice_mm(index: int, size: int, fov: float) -> float:
    """Position (mm from the isocentre) of slice ``index`` of a ``size`` grid over ``fov`` mm."""
    return (index + 0.5) * fov / size - fov / 2


def show_ct(ax, vol: np.ndarray, view: str, index: int, fov_mm: Sequence[float], *, size: Optional[int] = None,
            diff: bool = False, title: str = "", labels: bool = False):
    """Draw a CT slice (grey, HU window [-1000, 1000]) or a difference (``diff``: red/blue, +-500 HU) on ``ax``."""
    cmap, (lo, hi) = ("RdBu_r", (-DIFF_HU, DIFF_HU)) if diff else ("gray", HU_WINDOW)
    im = ax.imshow(ct_slice(vol, view, index, size), cmap=cmap, vmin=lo, vmax=hi, extent=_extent(view, fov_mm))
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=6)
    if labels:
        h, v, _ = _PLANE[view]
        ax.set_xlabel(AXIS_LABELS[h], fontsize=7)
        ax.set_ylabel(AXIS_LABELS[v], fontsize=7)
    return im


def show_xray(ax, xrays: np.ndarray, geometry, k: int, *, title: Optional[str] = None, vmax: Optional[float] = None,
              slice_at: Optional[tuple[str, int]] = None):
    """Draw view ``k`` (0 AP, 1 lateral) of ``xrays`` as a radiograph (bright = more attenuation), detector mm.

    ``slice_at=(view, index)`` marks where that CT slice crosses this X-ray (a dotted yellow line;
    at the isocentre's magnification for a cone beam).
    """
    name = geometry.views[k]
    as_view = "coronal" if name == "ap" else "sagittal"
    du, dv = geometry.pixel_mm(name)
    fov = (geometry.detector_px[0] * du, geometry.detector_px[0] * du, geometry.detector_px[1] * dv)
    im = ax.imshow(_orient(xrays[k], as_view), cmap="gray", vmin=0, vmax=vmax or float(np.max(xrays)),
                   extent=_extent(as_view, fov))
    if slice_at is not None:
        view, index = slice_at
        axis = VIEWS[view]
        pos = slice_mm(index, geometry.size, geometry.fov_mm[axis]) * geometry.magnification()
        if axis == 2:
            ax.axhline(pos, color="y", ls=":", lw=1)
        elif (axis == 0) == (name == "ap"):        # x cuts the AP image, y the lateral one
            ax.axvline(pos, color="y", ls=":", lw=1)
    ax.set_title(title if title is not None else f"{name} X-ray", fontsize=8)
    ax.tick_params(labelsize=6)
    return im


def noisy_xrays(hu: np.ndarray, geometry, photons: float, seed: int) -> np.ndarray:
    """The two X-rays of ``hu`` with Poisson noise at ``photons`` per pixel (0: noise-free), noise seed ``seed``.

    With the geometry's photon count and the phantom's seed these are
    :func:`~workbench.tasks.xray2ct.workflow.sample_case`'s X-rays.
    """
    import torch

    from workbench.tasks.xray2ct.geometry import add_photon_noise, project_hu

    p = torch.from_numpy(project_hu(hu, geometry))
    return add_photon_noise(p, float(photons), torch.Generator().manual_seed(int(seed))).numpy()


# ----------------------------------------------------------------------------- figures and tables
def compare_figure(reference: np.ndarray, results: Mapping[str, np.ndarray], fov_mm: Sequence[float], *,
                   fine_reference: Optional[np.ndarray] = None, index: Optional[Mapping[str, int]] = None,
                   panel_size: float = 1.75):
    """Rows: the reference (and ``fine_reference``, the same anatomy on a finer grid such as stage 2's 128^3), then
    each result; columns: axial, coronal, sagittal slices, then each one's difference to the reference of its grid.

    ``index``: slice per view on the reference's grid (default: the middle of each).
    """
    import matplotlib.pyplot as plt

    size = reference.shape[0]
    index = {v: size // 2 for v in VIEWS} | dict(index or {})
    refs = {reference.shape: reference}
    if fine_reference is not None:
        refs[fine_reference.shape] = fine_reference
    for name, vol in results.items():
        if vol.shape not in refs:
            raise ValueError(f"{name} is {vol.shape}: no reference of that grid (pass fine_reference=)")
    rows = {"reference": reference, **({"reference ": fine_reference} if fine_reference is not None else {}),
            **results}
    first = 2 if fine_reference is not None else 1
    fig, axes = plt.subplots(len(rows), 6, figsize=(6 * panel_size, len(rows) * panel_size * 0.85 + 0.6),
                             squeeze=False, layout="constrained")
    for r, (name, vol) in enumerate(rows.items()):
        for c, view in enumerate(VIEWS):
            im = show_ct(axes[r, c], vol, view, index[view], fov_mm, size=size, title=view if r == 0 else "")
            if r < first:
                axes[r, c + 3].set_axis_off()
                continue
            dim = show_ct(axes[r, c + 3], vol - refs[vol.shape], view, index[view], fov_mm, size=size, diff=True,
                          title=f"{view}: difference" if r == first else "")
        grid = f" ({vol.shape[0]}³)" if vol.shape != reference.shape else ""
        axes[r, 0].set_ylabel(f"{name.strip()}{grid}", fontsize=8)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(im, ax=axes[-1, :3], location="bottom", shrink=0.7, aspect=40, label="HU")
    if len(rows) > first:
        fig.colorbar(dim, ax=axes[-1, 3:], location="bottom", shrink=0.7, aspect=40,
                     label="result - reference (HU; red: too dense)")
    return fig


def evaluate_all(results: Mapping[str, np.ndarray], reference: np.ndarray, xrays=None, geometry=None, *,
                 fine_reference: Optional[np.ndarray] = None) -> dict[str, dict[str, float]]:
    """:func:`~workbench.tasks.xray2ct.metrics.evaluate_ct` of every result against the reference of its grid
    (the re-projection error only on the X-rays' own grid)."""
    from workbench.tasks.xray2ct.metrics import evaluate_ct

    refs = {reference.shape: reference}
    if fine_reference is not None:
        refs[fine_reference.shape] = fine_reference
    return {name: evaluate_ct(vol, refs[vol.shape], xrays=xrays, geometry=geometry) for name, vol in results.items()}


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"


def metrics_table(scores: Mapping[str, Mapping[str, float]], keys: Sequence[str] = TABLE_KEYS) -> str:
    """A plain-text table: one row per method, one column per metric (the task's labels)."""
    from workbench.tasks.xray2ct.metrics import LABEL_NAMES

    short = {"reprojection_error": "re-projection error"}
    rows = [["method", *(short.get(k, LABEL_NAMES.get(k, k)) for k in keys)]]
    rows += [[name, *(_fmt(s.get(k)) for k in keys)] for name, s in scores.items()]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the explorer
class XrayExplorer:
    """Pick a phantom, a dose, a method and a slice: the X-rays, the reconstruction and its metrics update.

    Parameters
    ----------
    predictor : XrayPredictor, optional
        The stage-1 network (needed for ``"network"``).
    linear : LinearModel, optional
        The atlas and ridge model (needed for ``"atlas"`` and ``"ridge"``).
    methods : sequence of str
        Methods in the dropdown (default :data:`METHODS`).
    seed, size, kind
        The first phantom (:func:`~workbench.tasks.xray2ct.workflow.sample_case`; seeds above
        900 000 000 lie outside every training set) and its grid and beams (default: the predictor's,
        else 64 and parallel).

    Widgets: ``seed`` (phantom), ``photons`` (per detector pixel: the dose), ``method``, ``view``
    (axial / coronal / sagittal) and ``slice``. Panels: the two X-rays (the slice marked), the
    reference slice, the reconstruction, their difference, and the PSNR of every
    (method, dose) tried on this phantom (``records``; :meth:`sweep` adds several at once).
    Reconstructions are cached per (seed, photons, method).
    """

    def __init__(self, predictor=None, linear=None, *, methods: Sequence[str] = METHODS, seed: int = 900_000_001,
                 size: Optional[int] = None, kind: Optional[str] = None, photons: Optional[float] = None,
                 view: str = "coronal", panel_size: float = 2.3):
        import ipywidgets as W

        from workbench.notebook_ui import FigurePanel

        self.methods = tuple(methods)
        if not self.methods or not set(self.methods) <= set(METHODS):
            raise ValueError(f"methods must be some of {', '.join(METHODS)}, got {list(methods)}")
        if "network" in self.methods and predictor is None:
            raise ValueError("the network method needs its predictor: pass predictor=")
        if {"atlas", "ridge"} & set(self.methods) and linear is None:
            raise ValueError("the atlas and ridge methods need the linear model: pass linear=")
        own = getattr(predictor, "geometry", None)
        self.size = int(size or (own.size if own else 64))
        self.kind = kind or (own.kind if own else "parallel")
        self.predictor, self.linear = predictor, linear
        self.records: list[dict] = []
        self._cases: dict[int, dict] = {}
        self._cache: dict[tuple, tuple[np.ndarray, dict]] = {}
        self.last_seconds = 0.0
        g = self.case_of(seed)["geometry"]
        self.seed = W.BoundedIntText(value=seed, min=0, max=2 ** 31 - 1, description="phantom seed")
        self.photons = W.FloatLogSlider(value=photons or g.photons, base=10, min=2, max=7, step=0.25,
                                        description="photons/px", readout_format=".2g", continuous_update=False)
        self.method = W.Dropdown(options=list(self.methods), value=self.methods[-1], description="method")
        self.view = W.ToggleButtons(options=list(VIEWS), value=view, description="view")
        self.slice = W.IntSlider(value=self.size // 2, min=0, max=self.size - 1, description="slice")
        self.status = W.HTML("")
        self.panel = FigurePanel(1, 6, figsize=(panel_size * 6, panel_size + 0.5))
        self.panel.figure.subplots_adjust(left=0.03, right=0.99, bottom=0.17, top=0.86, wspace=0.4)  # fixed: fast
        for w in (self.view, self.slice):
            w.observe(lambda _c: self.update(), names="value")
        for w in (self.seed, self.photons, self.method):
            w.observe(lambda _c: self.reconstruct(), names="value")
        self.widget = W.VBox([W.HBox([self.seed, self.photons, self.method]), W.HBox([self.view, self.slice]),
                              self.status, self.panel.image])
        self.reconstruct()

    def _repr_mimebundle_(self, **kwargs):
        return self.widget._repr_mimebundle_(**kwargs)

    # -- computing ---------------------------------------------------------------
    def case_of(self, seed: int) -> dict:
        """The phantom of ``seed`` (cached)."""
        from workbench.tasks.xray2ct import workflow

        seed = int(seed)
        if seed not in self._cases:
            self._cases[seed] = workflow.sample_case(seed=seed, size=self.size, kind=self.kind)
        return self._cases[seed]

    def xrays(self, seed: int, photons: float) -> np.ndarray:
        """The phantom's two X-rays at ``photons`` per pixel (noise seeded by the phantom's seed)."""
        case = self.case_of(seed)
        if float(photons) == float(case["geometry"].photons):
            return case["xrays"]
        return noisy_xrays(case["ct"], case["geometry"], photons, seed)

    def run(self, method: str, seed: int, photons: float) -> tuple[np.ndarray, dict]:
        """``method``'s volume for the phantom ``seed`` at ``photons`` and its metrics (cached, recorded)."""
        from workbench.tasks.xray2ct import workflow
        from workbench.tasks.xray2ct.metrics import evaluate_ct

        key = (method, int(seed), round(float(photons), 6))
        if key not in self._cache:
            case, xr = self.case_of(seed), self.xrays(seed, photons)
            t0 = time.perf_counter()
            vol = workflow.reconstruct(method, xr, case["geometry"], predictor=self.predictor, linear=self.linear)
            self.last_seconds = time.perf_counter() - t0
            m = evaluate_ct(vol, case["ct"], xrays=xr, geometry=case["geometry"])
            self._cache[key] = (vol, m)
            self.records.append({"method": method, "seed": key[1], "photons": key[2], "seconds": self.last_seconds,
                                 **m})
        return self._cache[key]

    def sweep(self, photons: Sequence[float], methods: Optional[Sequence[str]] = None) -> list[dict]:
        """Reconstruct the shown phantom with every method of ``methods`` (default all) at each photon count;
        redraw; returns the new records."""
        n0 = len(self.records)
        for method in methods or self.methods:
            for p in photons:
                self.run(method, self.seed.value, p)
        self.update()
        return self.records[n0:]

    def reconstruct(self) -> None:
        self.status.value = f"reconstructing with {self.method.value} ..."
        self.run(self.method.value, self.seed.value, self.photons.value)
        self.update()

    # -- drawing -----------------------------------------------------------------
    def update(self) -> None:
        seed, photons, method, view, k = (self.seed.value, self.photons.value, self.method.value, self.view.value,
                                          self.slice.value)
        case, xr = self.case_of(seed), self.xrays(seed, photons)
        vol, m = self.run(method, seed, photons)
        g = case["geometry"]
        axes = self.panel.axes[0]
        for ax in axes:
            ax.clear()
        vmax = float(np.percentile(case["xrays"], 99.9))
        for j in range(2):
            show_xray(axes[j], xr, g, j, vmax=vmax, slice_at=(view, k),
                      title=f"{g.views[j]} X-ray, {photons:.2g} photons/px")
        show_ct(axes[2], case["ct"], view, k, g.fov_mm, title=f"phantom {seed}: {view} {k}")
        show_ct(axes[3], vol, view, k, g.fov_mm, title=f"{method}: PSNR {m['psnr']:.1f} dB")
        show_ct(axes[4], vol - case["ct"], view, k, g.fov_mm, diff=True,
                title=f"{method} - phantom (±{DIFF_HU:.0f} HU)")
        ax = axes[5]
        for i, name in enumerate(self.methods):
            pts = sorted((r["photons"], r["psnr"]) for r in self.records if r["method"] == name and r["seed"] == seed)
            if pts:
                ax.semilogx(*zip(*pts), "o-", ms=3, color=f"C{i}", label=name)
        ax.axvline(photons, color="k", ls=":", lw=0.8)
        ax.set_xlabel("photons per pixel", fontsize=7)
        ax.set_title(f"PSNR (dB), phantom {seed}", fontsize=8)
        ax.tick_params(labelsize=6)
        ax.legend(fontsize=6)
        self.panel.render()
        cells = "".join(f"<td>{lab}: <b>{_fmt(m.get(key))}</b></td>" for key, lab in (
            ("psnr", "PSNR dB"), ("ssim", "SSIM"), ("mae_hu", "MAE HU"), ("dice_lung", "Dice lungs"),
            ("dice_bone", "Dice bone"), ("reprojection_error", "re-projection error")))
        self.status.value = f"<table><tr><td><b>{method}</b></td>{cells}</tr></table>"
