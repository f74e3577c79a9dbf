"""Classical anchors for CT from two X-rays: the back-projection smear, a mean atlas, and ridge regression.

``backprojection``
    each view's line integral spread evenly along its ray (attenuation = integral /
    ray length through the field), the two views averaged, converted to HU. No
    training: it shows what the geometry alone says.
``atlas``
    the mean training volume, whatever the X-rays (what a model that ignores its input
    scores).
``ridge``
    a linear statistical model: the volume's principal components (PCA of the training
    volumes) regressed on the two downsampled X-rays by ridge regression, the penalty
    chosen by generalised cross-validation (Golub, Heath & Wahba 1979). This is the
    classical shape-model approach to 2D-3D reconstruction (e.g. Lamecker et al. 2006,
    statistical shape models from X-rays) without landmarks.

The atlas and the ridge model are fitted on the same training volumes as the network
(:func:`fit_linear`) and stored as one small ``.npz``; the shipped one is
``weights/xray2ct_linear.npz``. The principal components are kept on a coarser grid
(``basis_grid``, 32^3 by default) and interpolated, so the file stays a few MB; the mean
is kept at full resolution.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from workbench.io_utils import InputError, atomic_path
from workbench.tasks.xray2ct.geometry import MU_WATER, XrayGeometry, backproject

PathLike = str | os.PathLike
METHODS = ("backprojection", "atlas", "ridge")


def backprojection(xrays: np.ndarray, g: XrayGeometry) -> np.ndarray:
    """HU volume (G, G, G) of the back-projection smear of (2, nu, nv) line integrals."""
    with torch.no_grad():
        mu = backproject(torch.from_numpy(np.asarray(xrays, np.float32))[None], g)[0, 0].numpy()
    return ((mu / MU_WATER - 1.0) * 1000.0).astype(np.float32)


def _features(xrays: np.ndarray, size: int = 32) -> np.ndarray:
    """(N, 2, nu, nv) X-rays -> (N, 2 * size^2) features (area-downsampled)."""
    t = torch.from_numpy(np.asarray(xrays, np.float32))
    return F.adaptive_avg_pool2d(t, size).reshape(t.shape[0], -1).numpy().astype(np.float64)


def _resize(vols: np.ndarray, grid: int) -> np.ndarray:
    t = torch.from_numpy(np.asarray(vols, np.float32))[:, None]
    if t.shape[-1] == grid:
        return t[:, 0].numpy()
    mode = "area" if grid < t.shape[-1] else "trilinear"
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(t, size=(grid,) * 3, mode=mode, **kw)[:, 0].numpy()


@dataclass
class LinearModel:
    """Atlas (mean) + PCA basis + ridge map from X-ray features to PCA coefficients."""

    mean: np.ndarray            # (G, G, G) HU
    basis: np.ndarray           # (k, b, b, b) on the basis grid
    coef: np.ndarray            # (features, k)
    feat_mean: np.ndarray
    feat_scale: np.ndarray
    geometry: XrayGeometry
    lam: float = 0.0

    def atlas(self) -> np.ndarray:
        return self.mean.astype(np.float32)

    def ridge(self, xrays: np.ndarray) -> np.ndarray:
        f = (_features(np.asarray(xrays)[None]) - self.feat_mean) / self.feat_scale
        c = f @ self.coef                                             # (1, k)
        delta = np.tensordot(c[0], self.basis.astype(np.float32), axes=1)
        return (self.mean + _resize(delta[None], self.mean.shape[0])[0]).astype(np.float32)

    def save(self, path: PathLike) -> Path:
        with atomic_path(Path(path)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, mean=self.mean.astype(np.float16), basis=self.basis.astype(np.float16),
                                    coef=self.coef.astype(np.float32), feat_mean=self.feat_mean,
                                    feat_scale=self.feat_scale, lam=self.lam,
                                    geometry=np.array(json.dumps(self.geometry.to_dict())))
        return Path(path)

    @classmethod
    def load(cls, path: PathLike) -> "LinearModel":
        path = Path(path)
        if not path.is_file():
            raise InputError(f"linear model {path} not found: fit one with `workbench xray2ct train DATA --stage "
                             "linear` or omit it for the shipped one")
        z = np.load(path)
        return cls(z["mean"].astype(np.float32), z["basis"].astype(np.float32), z["coef"], z["feat_mean"],
                   z["feat_scale"], XrayGeometry.from_dict(json.loads(str(z["geometry"]))), float(z["lam"]))


def fit_linear(volumes: Sequence[np.ndarray], xrays: np.ndarray, g: XrayGeometry, *, k: int = 64,
               basis_grid: int = 32) -> LinearModel:
    """Fit the atlas and the ridge model on training ``volumes`` (HU) and their ``xrays`` (N, 2, nu, nv)."""
    vols = np.stack([np.asarray(v, np.float32) for v in volumes])
    n = len(vols)
    mean = vols.mean(0)
    small = _resize(vols - mean, basis_grid).reshape(n, -1).astype(np.float64)
    k = int(min(k, n - 1))
    if k < 1:
        raise InputError("the ridge model needs at least 2 training volumes")
    u, s, vt = np.linalg.svd(small, full_matrices=False)
    basis = vt[:k]                                                    # (k, b^3) orthonormal
    scores = small @ basis.T                                          # (n, k)
    feats = _features(xrays)
    fm, fs = feats.mean(0), feats.std(0) + 1e-6
    X = (feats - fm) / fs
    U, S, Vt = np.linalg.svd(X, full_matrices=False)
    UtY = U.T @ scores
    best = None
    for lam in np.logspace(-3, 4, 36) * (S[0] ** 2) / 1e3:           # GCV over a log grid
        d = S ** 2 / (S ** 2 + lam)
        resid = scores - U @ (d[:, None] * UtY)
        gcv = (resid ** 2).sum() / (n * (1 - d.sum() / n) ** 2)
        if best is None or gcv < best[0]:
            best = (gcv, lam)
    lam = best[1]
    coef = Vt.T @ ((S / (S ** 2 + lam))[:, None] * UtY)               # (features, k)
    return LinearModel(mean.astype(np.float32), basis.reshape(k, *(basis_grid,) * 3).astype(np.float32), coef,
                       fm, fs, g, float(lam))


def reconstruct_baseline(method: str, xrays: np.ndarray, g: XrayGeometry,
                         linear: Optional[LinearModel] = None) -> np.ndarray:
    """HU volume of one baseline; ``atlas`` and ``ridge`` need a fitted :class:`LinearModel`."""
    if method == "backprojection":
        return backprojection(xrays, g)
    if method not in METHODS:
        raise InputError(f"unknown baseline {method!r}; known: {', '.join(METHODS)}")
    if linear is None:
        raise InputError(f"the {method} baseline needs a fitted linear model")
    if not linear.geometry.same_beams(g):
        raise InputError(f"the linear model was fitted for another X-ray geometry ({linear.geometry.kind} beam): "
                         "fit one for this geometry")
    return linear.atlas() if method == "atlas" else linear.ridge(xrays)
