"""The linear leave-one-out priors as operators: two (N, N) matrices each, applied where a region is needed.

The regression and spherical-harmonic priors of :mod:`workbench.data.qspace` are linear in
the signal: prior ``l`` of volume ``j`` at a voxel of checkerboard parity ``p`` is
``sum_i v_i W[l, p, i, j] + b[l, p, j]`` (``W[l, p, j, j] = 0``: volume ``j`` is never
used). Stored for the whole series they cost ``L`` float16 copies of it (0.34 GB at
128 x 128 x 80 x 65 for the two); applied to the 32^3 patch or the tile the network is
about to read they cost about ``2 L N`` multiply-adds per voxel, next to nothing beside
the network itself. :class:`workbench.data.dwi.DWISubject` keeps them this way.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LinearPriors", "linear_priors", "parity_of"]


def parity_of(region: tuple[slice, ...], shape: tuple[int, ...]) -> torch.Tensor:
    """(x + y + z) % 2 (bool) over ``region`` of a volume of ``shape``: :func:`qspace.checkerboard` cut to it."""
    axes = [torch.arange(*r.indices(s)) for r, s in zip(region, shape)]
    return ((axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :]) % 2).bool()


@dataclass
class LinearPriors:
    """Linear priors ``l = 0 .. L-1`` (``names``) of every volume, computed on demand.

    ``weights`` is (L, 2, N, N) float32: ``weights[l, p, :, j]`` predicts volume ``j`` at the
    voxels of parity ``p`` (the regression is cross-fitted: fitted on the other parity);
    ``intercepts`` is (L, 2, N).
    """

    weights: torch.Tensor
    intercepts: torch.Tensor
    names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.weights.shape[0])

    def predict(self, volumes: torch.Tensor, j: int, parity: torch.Tensor) -> torch.Tensor:
        """(L, ...) float32 priors of volume ``j`` from ``volumes`` (N, ...) of the same region as ``parity``."""
        n = volumes.shape[0]
        flat = volumes.reshape(n, -1).float()
        both = torch.einsum("lpn,nv->lpv", self.weights[:, :, :, j], flat) + self.intercepts[:, :, j, None]
        out = torch.where(parity.reshape(-1), both[:, 1], both[:, 0])
        return out.reshape((len(self),) + tuple(volumes.shape[1:]))

    def predict_rows(self, rows: np.ndarray, parity: np.ndarray, which: int = 0) -> np.ndarray:
        """(V, N) float32 prior ``which`` of every volume at ``rows`` (V, N) of voxels of ``parity`` (V,)."""
        rows = np.asarray(rows, dtype=np.float32)
        out = np.empty(rows.shape, dtype=np.float32)
        for p in (0, 1):
            at = np.asarray(parity) == p
            out[at] = rows[at] @ self.weights[which, p].numpy() + self.intercepts[which, p].numpy()
        return out


def linear_priors(data: np.ndarray, bvals: np.ndarray | None, bvecs: np.ndarray | None,
                  mask: np.ndarray | None, names: tuple[str, ...], sh_order: int = 4) -> LinearPriors:
    """Fit the linear priors ``names`` (``"regression"``, ``"sh"``) of a (X, Y, Z, N) series.

    Regression: voxelwise ridge regression of each volume on the others, cross-fitted over
    the checkerboard parities (:func:`workbench.data.qspace.regression_loo_matrix`; Patch2Self
    with patch radius 0, Fadnavis et al. 2020). SH: per-shell spherical-harmonic fits to the
    other directions (:func:`workbench.data.qspace.sh_prior_matrix`, Descoteaux et al. 2007);
    a volume SH cannot predict (a lone b0, or no gradient table) takes the regression's column.
    """
    from workbench.data.qspace import checkerboard, fit_voxels, regression_loo_matrix, sh_prior_matrix

    n = data.shape[-1]
    flat = data.reshape(-1, n)
    inside = fit_voxels(data, mask, n).reshape(-1)
    checker = checkerboard(data.shape[:3]).reshape(-1)
    # cross-fitting: the weights applied to one parity are fitted on the other
    reg = [regression_loo_matrix(flat[inside & (checker != parity)]) for parity in (0, 1)]
    reg_w = np.stack([w[:, :n].T for w in reg])  # (2, N_in, N_out)
    reg_b = np.stack([w[:, n] for w in reg])  # (2, N_out)
    weights, intercepts = [], []
    for name in names:
        if name == "regression":
            weights.append(reg_w)
            intercepts.append(reg_b)
        elif name == "sh":
            if bvals is None or bvecs is None:  # no gradient table: the SH prior falls back to regression
                weights.append(reg_w)
                intercepts.append(reg_b)
                continue
            w, unfilled = sh_prior_matrix(bvals, bvecs, sh_order)
            sh_w = np.stack([w.T, w.T])
            sh_w[:, :, unfilled] = reg_w[:, :, unfilled]
            sh_b = np.where(unfilled[None, :], reg_b, 0.0)
            weights.append(sh_w)
            intercepts.append(sh_b)
        else:
            raise ValueError(f"unknown linear prior {name!r}; known: regression, sh")
    shape = (len(names), 2, n)
    return LinearPriors(torch.from_numpy(np.asarray(weights, np.float32).reshape(shape + (n,))),
                        torch.from_numpy(np.asarray(intercepts, np.float32).reshape(shape)), tuple(names))
