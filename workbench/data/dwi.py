"""The DWI denoising task: normalisation, masks, J-invariant inputs and patch sampling.

For target volume ``j`` the network input is, channel by channel::

    [prior_1(j), ..., prior_P(j), v_0, ..., v_{j-1}, 0, v_{j+1}, ..., v_{N-1}]

where the priors are closed-form leave-one-out predictions of ``j``
(:mod:`workbench.data.qspace`) and volume ``j`` itself is zeroed. With
``data.volume_input: denoised`` the ``v_i`` are what the split prior of ``j``'s fold read
instead (:mod:`workbench.data.fold_inputs`), which never saw ``j``'s noise either. Nothing in the input depends on the noisy target, so the loss against it is the J-invariant
self-supervised loss of Batson & Royer (Noise2Self, 2019): its expectation is
the error to the clean signal plus the noise variance.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage

from workbench.config import DataConfig
from workbench.data.fold_inputs import DenoisedFolds
from workbench.data.linear_priors import LinearPriors, parity_of
from workbench.data.qspace import B0_THRESHOLD, fold_labels, stored_and_linear_priors
from workbench.data.transforms import apply_augment, sample_augment
from workbench.io_utils import InputError
from workbench.training.sampling import Batch


def compute_mask(data: np.ndarray, bvals: Optional[np.ndarray]) -> np.ndarray:
    """Brain mask from the mean b0 (or mean of all volumes) with DIPY's median_otsu."""
    from dipy.segment.mask import median_otsu

    if bvals is not None and np.any(bvals <= B0_THRESHOLD):
        ref = data[..., bvals <= B0_THRESHOLD].mean(axis=-1)
    else:
        ref = data.mean(axis=-1)
    _, mask = median_otsu(ref, median_radius=2, numpass=1)
    if mask.sum() < 0.01 * mask.size:  # otsu failed (e.g. no background): use everything non-zero
        mask = ref > 0
    return mask.astype(bool)


@dataclass
class DWISubject:
    """One prepared series: normalised volumes, priors and masks as torch tensors."""

    #: (N, X, Y, Z) float32, divided by ``scale``: a view of an (X, Y, Z, N) C-ordered array (the layout
    #: MP-PCA reads in place; one voxel's volumes side by side)
    volumes: torch.Tensor
    #: (S, N, X, Y, Z) float16, the stored (non-linear) priors: the split MP-PCA prior, or none (S = 0);
    #: half the memory of float32, rounding 5e-4 of the signal, far below the noise
    priors: torch.Tensor
    mask: torch.Tensor  # (X, Y, Z) bool, the brain
    loss_mask: torch.Tensor  # (X, Y, Z) float, the brain dilated: where the loss is computed
    scale: float
    bvals: Optional[np.ndarray] = None
    bvecs: Optional[np.ndarray] = None
    #: the linear priors (regression, SH), computed for the region the network reads
    linear: Optional[LinearPriors] = None
    #: volumes whose priors :meth:`release_volume_priors` handed back (their network input is gone)
    released: set = field(default_factory=set, repr=False)
    #: ``data.volume_input: denoised``: the other volumes as the network reads them, per prior fold of its
    #: target (:mod:`workbench.data.fold_inputs`); else None
    denoised: Optional[DenoisedFolds] = None

    @property
    def n_volumes(self) -> int:
        return int(self.volumes.shape[0])

    @property
    def n_priors(self) -> int:
        """Prior channels of the network input: the stored ones, then the linear ones."""
        return int(self.priors.shape[0]) + (len(self.linear) if self.linear is not None else 0)

    @property
    def has_priors(self) -> bool:
        """False after :meth:`release_priors` or :meth:`release_volume_priors` (a series without
        priors, P = 0, always has them)."""
        return self.priors.shape[0] == 0 or (self.priors.shape[1] == self.n_volumes and not self.released)

    @property
    def in_channels(self) -> int:
        return self.n_priors + self.n_volumes

    def network_input(self, j: int, region: Optional[tuple[slice, slice, slice]] = None) -> torch.Tensor:
        """(P + N, ...) input for target volume ``j``; volume ``j`` is zeroed (J-invariance)."""
        region = region or (slice(None),) * 3
        if j in self.released:
            raise RuntimeError(f"the priors of volume {j} were released: prepare the series again")
        vols = self.volumes[(slice(None),) + region]
        p, s = self.n_priors, self.priors.shape[0]
        out = torch.empty((p + self.n_volumes,) + vols.shape[1:], dtype=self.volumes.dtype)
        out[:s] = self.priors[(slice(None), j) + region]
        for x in range(vols.shape[1]):  # x-plane by x-plane: ~2.5x faster than one copy out of the (X, Y, Z, N) layout
            out[p:, x] = vols[:, x]
        if self.linear is not None:  # from the contiguous copy of the volumes just made
            out[s:p] = self.linear.predict(out[p:], j, parity_of(region, tuple(self.volumes.shape[1:])))
        if self.denoised is not None:  # the linear priors read the noisy volumes, the network the denoised
            self.denoised.fill(out[p:], j, self.priors[0], region)
        out[p + j] = 0.0
        return out

    def release_priors(self) -> None:
        """Drop the priors (P x the series' memory) once no more network inputs are needed.

        A new empty tensor, not a view: an empty view would keep the whole storage alive.
        """
        self.priors = self.priors.new_empty((self.priors.shape[0], 0) + tuple(self.priors.shape[2:]))
        if self.denoised is not None:
            self.denoised.others = [None] * self.denoised.n_folds

    def prediction_order(self) -> list[int]:
        """The volumes in the order whole-series inference predicts them: fold by fold with denoised volume
        inputs (so each fold's denoised volumes can be released once its last volume is predicted), else 0..N-1."""
        if self.denoised is None:
            return list(range(self.n_volumes))
        return [int(j) for j in np.argsort(self.denoised.folds, kind="stable")]

    def release_volume_priors(self, j: int) -> None:
        """Hand the memory of volume ``j``'s priors back to the OS once its prediction is done.

        Whole-series inference predicts one volume after another, so the priors shrink as
        the predictions grow (:func:`workbench.allocator.release_pages`, Linux); the network
        input of ``j`` is then refused and :attr:`has_priors` is False. With denoised volume inputs the
        inputs of ``j``'s fold-mates read ``j``'s prior, so the priors and the denoised volumes of a fold
        go together once every volume of that fold is released.
        """
        from workbench.allocator import release_pages

        self.released.add(int(j))
        done = [int(j)]
        if self.denoised is not None:
            k = int(self.denoised.folds[j])
            mates = self.denoised.inside(k).tolist()
            if not self.released.issuperset(mates):
                return
            self.denoised.release(k)
            done = mates
        for p in range(self.priors.shape[0]):
            for i in done:
                release_pages(self.priors[p, i])

    def lazy_input(self, j: int) -> "LazyInput":
        """:meth:`network_input` of volume ``j`` built tile by tile when indexed (``x[:, region]``),
        so whole-volume inference never holds the (P + N)-channel input of the whole volume."""
        return LazyInput(self, j)


class LazyInput:
    """The network input of one target volume, built only for the region it is indexed with."""

    def __init__(self, subject: DWISubject, j: int) -> None:
        self.subject, self.j = subject, j
        self.shape = (subject.in_channels,) + tuple(subject.volumes.shape[1:])

    def __getitem__(self, key: tuple[slice, ...]) -> torch.Tensor:
        if not isinstance(key, tuple) or len(key) != 4 or key[0] != slice(None):
            raise IndexError("index a LazyInput as x[:, region_x, region_y, region_z]")
        return self.subject.network_input(self.j, tuple(key[1:]))


def prepare_subject(
    data: np.ndarray,
    bvals: Optional[np.ndarray],
    bvecs: Optional[np.ndarray],
    cfg: DataConfig,
    mask: Optional[np.ndarray] = None,
    scale: Optional[float] = None,
    progress=None,
    should_stop=None,
    overwrite_input: bool = False,
) -> DWISubject:
    """Normalise a (X, Y, Z, N) series by the 99.5th percentile inside the mask and build its priors.

    ``progress(done, total)`` and ``should_stop()`` follow the q-space prior's MP-PCA planes (the slow part).
    ``overwrite_input``: a float32 C-ordered ``data`` is normalised in place and becomes the subject's
    volumes (no copy of the series; the caller must not use ``data`` afterwards); other arrays are copied.
    """
    if data.ndim != 4:
        raise InputError(f"expected a 4D series (X, Y, Z, N), got shape {data.shape}")
    if bvals is not None and bvecs is not None:
        from workbench.data.nifti import check_gradients

        check_gradients(bvals, bvecs)
    if mask is None:
        mask = compute_mask(data, bvals) if cfg.mask == "auto" else np.ones(data.shape[:3], bool)
    mask = np.asarray(mask).astype(bool)
    if mask.shape != data.shape[:3]:
        raise InputError(f"mask shape {mask.shape} does not match the series' spatial shape {data.shape[:3]}")
    if not mask.any():
        raise InputError("the mask is empty: pass a mask that covers the brain, or --mask none")
    if scale is None:
        scale = float(np.percentile(data[mask], 99.5))
    if not np.isfinite(scale) or scale <= 0:
        raise InputError("the series has no positive signal inside the mask: check the file and the mask")
    own = overwrite_input and data.dtype == np.float32 and data.flags.c_contiguous and data.flags.writeable
    # C order whatever the input's: (X, Y, Z, N), one row of volumes per voxel
    norm = data if own else np.empty(data.shape, dtype=np.float32)
    np.divide(data, scale, out=norm, casting="unsafe")
    denoised = None
    if cfg.denoised_volume_input:
        denoised = DenoisedFolds(fold_labels(norm.shape[-1], bvals, cfg.prior_folds))
    priors, linear = stored_and_linear_priors(
        norm, bvals, bvecs, mask, cfg.qspace_prior, cfg.sh_order, cfg.prior_folds, progress=progress,
        should_stop=should_stop, mppca_stride=cfg.mppca_stride, volumes_first=True, dtype=np.float16,
        mppca_lattice=cfg.mppca_lattice, denoised=denoised, ridge=cfg.prior_ridge)
    loss_mask = ndimage.binary_dilation(mask, iterations=2)
    return DWISubject(
        volumes=torch.from_numpy(norm).permute(3, 0, 1, 2),
        priors=torch.from_numpy(priors),
        mask=torch.from_numpy(mask),
        loss_mask=torch.from_numpy(loss_mask.astype(np.float32)),
        scale=scale,
        bvals=None if bvals is None else np.asarray(bvals),
        bvecs=None if bvecs is None else np.asarray(bvecs),
        linear=linear,
        denoised=denoised,
    )


@dataclass
class DWIPatchSampler:
    """Random 3D patches and held-out volume indices from one or more prepared series.

    Patch corners are drawn so that each patch contains a random brain voxel; a
    series smaller than the patch is sampled whole along that axis.
    """

    subjects: Sequence[DWISubject]
    patch_size: int = 32
    augment: bool = False
    n_validation: int = 8
    validation_seed: int = 12345
    _brain_voxels: list = field(default_factory=list, init=False, repr=False)
    _validation: Optional[list] = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.subjects:
            raise InputError("no training series given")
        n = {s.n_volumes for s in self.subjects}
        p = {s.n_priors for s in self.subjects}
        if len(n) > 1 or len(p) > 1:
            raise InputError(f"all training series must have the same number of volumes, got {sorted(n)}")
        self._brain_voxels = [torch.nonzero(s.mask, as_tuple=False) for s in self.subjects]

    @property
    def n_volumes(self) -> int:
        return self.subjects[0].n_volumes

    @property
    def in_channels(self) -> int:
        return self.subjects[0].in_channels

    def _region(self, subject: DWISubject, center: torch.Tensor) -> tuple[slice, ...]:
        region = []
        for axis in range(3):
            size = subject.volumes.shape[1 + axis]
            ps = min(self.patch_size, size)
            start = int(center[axis]) - ps // 2
            start = max(0, min(start, size - ps))
            region.append(slice(start, start + ps))
        return tuple(region)

    def _draw(self, generator: torch.Generator, augment: bool):
        s = int(torch.randint(len(self.subjects), (1,), generator=generator))
        subject = self.subjects[s]
        voxels = self._brain_voxels[s]
        center = voxels[int(torch.randint(len(voxels), (1,), generator=generator))]
        j = int(torch.randint(subject.n_volumes, (1,), generator=generator))
        region = self._region(subject, center)
        image = self._input(subject, j, region)
        target = self._target(subject, j, region)
        mask = subject.loss_mask[region][None]
        if augment:
            image, target, mask = apply_augment(sample_augment(generator), image, target, mask)
        return image, target, mask, j

    def _input(self, subject, j: int, region: tuple[slice, slice, slice]) -> torch.Tensor:
        """(C, x, y, z) network input for target volume ``j`` in ``region`` (:meth:`DWISubject.network_input`)."""
        return subject.network_input(j, region)

    def _target(self, subject, j: int, region: tuple[slice, slice, slice]) -> torch.Tensor:
        """(1, x, y, z) training target of volume ``j`` in ``region``: the noisy volume itself (J-invariance)."""
        return subject.volumes[(slice(j, j + 1),) + region]

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._batch(generator, batch_size, self.augment)

    def validation_batches(self) -> list[Batch]:
        """Fixed patches (own seed, no augmentation), two per batch, identical on every call."""
        if self._validation is None:
            g = torch.Generator().manual_seed(self.validation_seed)
            self._validation = [self._batch(g, 2, False) for _ in range(max(1, self.n_validation // 2))]
        return self._validation

    def _batch(self, generator: torch.Generator, batch_size: int, augment: bool) -> Batch:
        draws = [self._draw(generator, augment) for _ in range(batch_size)]
        shapes = {d[0].shape[1:] for d in draws}
        if len(shapes) > 1:  # only when series of different sizes are mixed: crop to the smallest
            lo = tuple(min(s[a] for s in shapes) for a in range(3))
            draws = [(i[..., : lo[0], : lo[1], : lo[2]], t[..., : lo[0], : lo[1], : lo[2]],
                      m[..., : lo[0], : lo[1], : lo[2]], j) for i, t, m, j in draws]
        return Batch(
            input=torch.stack([d[0] for d in draws]),
            target=torch.stack([d[1] for d in draws]),
            cond=torch.tensor([d[3] for d in draws], dtype=torch.long),
            mask=torch.stack([d[2] for d in draws]),
        )
