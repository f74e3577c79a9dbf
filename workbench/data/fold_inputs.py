"""The other volumes as the DWI network reads them with ``data.volume_input: denoised``.

The split MP-PCA prior (:func:`workbench.data.qspace.split_mppca_prior`) denoises, for each
prior fold ``k``, the volumes *outside* ``k`` with MP-PCA run without ``k``, and regresses them
onto the volumes of ``k``. For a target ``j`` in fold ``k`` the network then reads

* the volumes outside ``k`` as that MP-PCA denoised them (kept here, float16), and
* the other volumes of ``k`` as their split prior (already stored as the network's prior channel),

both inside the brain dilated by 2 voxels, where MP-PCA ran, and 0 beyond it (there the prior falls
back to a regression on every volume, which would read ``j``). None of it saw ``j``'s noise: the
J-invariance of Noise2Self (Batson & Royer, ICML 2019) holds.

Only the MP-PCA outputs are kept, ``(folds - 1) / folds`` of the series each: twice the series'
float16 memory with 3 folds (the fold's own volumes are read from the prior, not stored again).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class DenoisedFolds:
    """Per prior fold, the volumes outside it as its split prior's MP-PCA denoised them.

    Filled by :func:`workbench.data.qspace.split_mppca_prior` through :meth:`keep`; read by
    :meth:`fill`; a fold's memory goes back with :meth:`release`.
    """

    #: (N,) the prior fold of each volume (:func:`workbench.data.qspace.fold_labels`)
    folds: np.ndarray
    #: (X, Y, Z) bool, where MP-PCA ran (the brain dilated by 2 voxels); set by ``keep``
    region: np.ndarray | None = None
    #: per fold: (X, Y, Z, volumes outside it) float16, or None once released / not yet kept
    others: list = field(init=False)
    #: per fold: whether its own volumes are read from the split prior (False: a fold whose complement was
    #: too small for MP-PCA keeps its other volumes noisy and its own 0)
    from_prior: list = field(init=False)

    def __post_init__(self) -> None:
        self.folds = np.asarray(self.folds, dtype=np.int64)
        n_folds = int(self.folds.max()) + 1 if len(self.folds) else 0
        self.others, self.from_prior = [None] * n_folds, [False] * n_folds

    @property
    def n_folds(self) -> int:
        return len(self.others)

    def inside(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.folds == k)

    def outside(self, k: int) -> np.ndarray:
        return np.flatnonzero(self.folds != k)

    def keep(self, k: int, values: np.ndarray, region: np.ndarray, from_prior: bool) -> None:
        """Store fold ``k``'s (X, Y, Z, volumes outside ``k``) ``values`` in float16 (clipped to its range
        in place: ``values`` is consumed)."""
        want = region.shape + (len(self.outside(k)),)
        if values.shape != want:
            raise ValueError(f"fold {k}: values of shape {values.shape}, expected {want}")
        from workbench.data.qspace import clip_for

        self.region = region
        self.others[k] = clip_for(np.float16, values).astype(np.float16)
        self.from_prior[k] = bool(from_prior)

    def fill(self, chans: torch.Tensor, j: int, prior: torch.Tensor,
             region: tuple[slice, slice, slice]) -> None:
        """Write target ``j``'s N volume channels over ``region`` into ``chans`` ((N, x, y, z) float32);
        ``prior`` is the split prior, (N, X, Y, Z). Channel ``j`` gets its fold-mates' treatment: the
        caller zeroes it."""
        k = int(self.folds[j])
        if self.others[k] is None:
            raise RuntimeError(f"the denoised volumes of fold {k} were released: prepare the series again")
        src, own = torch.from_numpy(self.outside(k)), torch.from_numpy(self.inside(k))
        den = torch.from_numpy(self.others[k][region])  # (x, y, z, outside) float16, a view
        # volumes-first, x-plane by x-plane (a plain copy_ transposes and casts fast; ``.to`` on the permuted
        # view would take ~10x longer), then one index_copy_ into the channels
        moved = torch.empty((len(src),) + tuple(den.shape[:3]), dtype=chans.dtype)
        for x in range(den.shape[0]):
            moved[:, x].copy_(den[x].permute(2, 0, 1))
        chans.index_copy_(0, src, moved)
        if self.from_prior[k]:
            mates = prior[(slice(None),) + region].index_select(0, own).to(chans.dtype)
            chans.index_copy_(0, own, mates.mul_(torch.from_numpy(self.region[region])))
        else:
            chans.index_fill_(0, own, 0.0)

    def release(self, k: int) -> None:
        """Hand fold ``k``'s denoised volumes back to the OS (:func:`workbench.allocator.release_pages`)."""
        from workbench.allocator import release_pages

        if self.others[k] is not None:
            release_pages(self.others[k])
            self.others[k] = None
