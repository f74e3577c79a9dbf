"""Super-resolution training data: LR/HR pairs on disk, intensity normalisation, patch sampling.

A pair is a low-resolution volume and its high-resolution reference on grids that
match the scale (:func:`workbench.tasks.sr.degrade.check_grids`). Intensities are
normalised per volume from the LR volume alone (robust 0.5-99.5 percentiles to
[0, 1]), so prediction, which only has the LR volume, normalises identically and
maps back to the input's units. Patches follow the torchio pattern: a sampler draws
all randomness (position, flips, in-plane rot90) from the trainer's generator into a
parameter object, and a deterministic function cuts and transforms the patch.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from workbench.io_utils import InputError
from workbench.training.sampling import Batch

PathLike = str | os.PathLike
LOW_PERCENTILE, HIGH_PERCENTILE = 0.5, 99.5


@dataclass(frozen=True)
class Intensity:
    """The affine map of a volume's intensities to about [0, 1]: ``(v - low) / (high - low)``."""

    low: float
    high: float

    @classmethod
    def of(cls, lr: np.ndarray) -> "Intensity":
        lo, hi = np.percentile(lr, [LOW_PERCENTILE, HIGH_PERCENTILE])
        if not hi > lo:  # a constant volume: keep its value, unit range
            hi = lo + 1.0
        return cls(float(lo), float(hi))

    def forward(self, v: np.ndarray) -> np.ndarray:
        return ((v - self.low) / (self.high - self.low)).astype(np.float32)

    def inverse(self, v: np.ndarray) -> np.ndarray:
        return (v * (self.high - self.low) + self.low).astype(np.float32)


@dataclass
class SRPair:
    """A normalised training pair: ``lr`` (X, Y, Z) and ``hr`` (sX, sY, sZ), float32."""

    lr: np.ndarray
    hr: np.ndarray
    name: str = ""

    @classmethod
    def from_arrays(cls, lr: np.ndarray, hr: np.ndarray, scale: Sequence[int], name: str = "") -> "SRPair":
        expect = tuple(int(s) * int(f) for s, f in zip(lr.shape, scale))
        if lr.ndim != 3 or hr.shape != expect:
            raise InputError(f"{name or 'pair'}: LR {lr.shape} and HR {hr.shape} do not match scale "
                             f"{tuple(scale)} (HR must be {expect}): degrade the HR with `workbench sr degrade`")
        norm = Intensity.of(lr)
        return cls(norm.forward(lr), norm.forward(hr), name)


def find_pairs(data_dirs: Sequence[PathLike]) -> list[tuple[Path, Optional[Path]]]:
    """``(hr, lr or None)`` for every ``hr_*.nii[.gz]`` in the folders (``lr_*`` with the same suffix)."""
    found = []
    for d in data_dirs:
        d = Path(d)
        if not d.is_dir():
            raise InputError(f"data folder not found: {d} (make one with `workbench sr simulate {d}`)")
        for hr in sorted(d.glob("hr_*.nii*")):
            key = re.sub(r"^hr_", "lr_", hr.name)
            lr = hr.with_name(key)
            found.append((hr, lr if lr.exists() else None))
    if not found:
        raise InputError(f"no hr_*.nii.gz files in {', '.join(map(str, data_dirs))}: "
                         "write pairs with `workbench sr simulate DIR` or name your volumes hr_XXX.nii.gz")
    return found


@dataclass(frozen=True)
class PatchParams:
    """Where and how one training patch is cut (drawn by :meth:`SRPairSampler.sample_params`).

    The photometric fields are seed 004's train-only augmentation: Gaussian noise of
    ``noise_std`` (from ``noise_seed``) and a Gaussian blur of ``blur_sigma`` LR voxels on the
    LR input (scanners differ in noise and sharpness), and ``v * gain + offset`` on both
    LR and HR (scanners differ in contrast and brightness; the pair stays consistent).
    """

    pair: int
    corner: tuple[int, int, int]
    flips: tuple[bool, bool, bool]
    rot90: int
    noise_std: float = 0.0
    noise_seed: int = 0
    blur_sigma: float = 0.0
    gain: float = 1.0
    offset: float = 0.0


def cut_patch(pair: SRPair, params: PatchParams, lr_patch: Sequence[int], scale: Sequence[int]
              ) -> tuple[np.ndarray, np.ndarray]:
    """The deterministic half of sampling: crop LR and the matching HR block, flip, rotate in-plane."""
    lr_sl = tuple(slice(c, c + p) for c, p in zip(params.corner, lr_patch))
    hr_sl = tuple(slice(c * s, (c + p) * s) for c, p, s in zip(params.corner, lr_patch, scale))
    lr, hr = pair.lr[lr_sl], pair.hr[hr_sl]
    for axis, flip in enumerate(params.flips):
        if flip:
            lr, hr = np.flip(lr, axis), np.flip(hr, axis)
    if params.rot90:
        lr, hr = np.rot90(lr, params.rot90, (0, 1)), np.rot90(hr, params.rot90, (0, 1))
    lr, hr = np.ascontiguousarray(lr), np.ascontiguousarray(hr)
    if params.gain != 1.0 or params.offset != 0.0:
        lr, hr = lr * np.float32(params.gain) + np.float32(params.offset), hr * np.float32(params.gain) + np.float32(params.offset)
    if params.blur_sigma > 0:
        from scipy import ndimage

        lr = ndimage.gaussian_filter(lr, [params.blur_sigma if f > 1 else 0.0 for f in scale], mode="nearest")
    if params.noise_std > 0:
        lr = lr + np.random.default_rng(params.noise_seed).normal(0.0, params.noise_std, lr.shape).astype(np.float32)
    return lr.astype(np.float32, copy=False), hr.astype(np.float32, copy=False)


class SRPairSampler:
    """Random LR/HR patch pairs for the generic trainer, and fixed validation patches.

    Parameters
    ----------
    pairs, val_pairs : sequence of SRPair
        Training pairs and held-out validation pairs (never sampled for training).
    scale : tuple of int
        Upscaling per axis.
    lr_patch : int or tuple of int
        LR patch edge (the HR patch is ``lr_patch * scale``); clipped to small volumes.
    augment : bool
        Random flips on every axis, and rot90 in the (x, y) plane where scale and patch
        are equal on both axes (voxel sizes along z often differ, so no rotation mixes z in).
    photometric : bool
        Also seed 004's noise (30%), blur (20%) and intensity (30%) augmentation (:class:`PatchParams`).
    slices : bool
        Cut single axial slices and hand them over as 2D batches (B, 1, X, Y), for 2D models
        super-resolving in-plane (the scale along z must be 1).
    context : int
        With ``slices``: the LR input also holds the ``context`` neighbouring slices on each
        side, as channels (B, 2 context + 1, X, Y); the target stays the centre HR slice.
    """

    def __init__(self, pairs: Sequence[SRPair], val_pairs: Sequence[SRPair], scale: Sequence[int],
                 lr_patch: int | Sequence[int] = 16, augment: bool = True, val_patches: int = 4,
                 photometric: bool = False, slices: bool = False, context: int = 0):
        if not pairs:
            raise InputError("no training pairs: give at least one hr_*.nii.gz")
        self.pairs, self.val_pairs = list(pairs), list(val_pairs) or list(pairs)
        self.scale = tuple(int(s) for s in scale)
        if slices and self.scale[2] != 1:
            raise InputError(f"slice training needs in-plane scale (s, s, 1), got {self.scale}: set options.inplane")
        smallest = np.min([p.lr.shape for p in self.pairs + self.val_pairs], axis=0)
        want = (lr_patch,) * 3 if np.isscalar(lr_patch) else tuple(lr_patch)
        self.context = int(context) if slices else 0
        want = (want[0], want[1], 2 * self.context + 1) if slices else want
        if slices and min(p.lr.shape[2] for p in self.pairs + self.val_pairs) < want[2]:
            raise InputError(f"{want[2]} context slices need volumes of at least {want[2]} slices: "
                             "use fewer context_slices or thicker volumes")
        self.lr_patch = tuple(int(min(w, s)) for w, s in zip(want, smallest))
        self.slices = bool(slices)
        self.photometric = bool(photometric)
        self.augment = augment
        self.val_patches = val_patches
        self._val: Optional[list[Batch]] = None

    def sample_params(self, generator: torch.Generator, pairs: Sequence[SRPair]) -> PatchParams:
        def randint(n: int) -> int:
            return int(torch.randint(n, (1,), generator=generator))

        i = randint(len(pairs))
        corner = tuple(randint(s - p + 1) for s, p in zip(pairs[i].lr.shape, self.lr_patch))
        flips = tuple(bool(randint(2)) for _ in range(3)) if self.augment else (False, False, False)
        can_rotate = self.augment and self.scale[0] == self.scale[1] and self.lr_patch[0] == self.lr_patch[1]
        params = PatchParams(i, corner, flips, randint(4) if can_rotate else 0)
        if not (self.augment and self.photometric):
            return params

        def uniform(lo: float, hi: float) -> float:
            return lo + (hi - lo) * float(torch.rand((), generator=generator))

        noise = uniform(0.01, 0.05) if uniform(0, 1) < 0.3 else 0.0
        noise_seed = randint(2**31 - 1)
        blur = uniform(0.3, 0.8) if uniform(0, 1) < 0.2 else 0.0
        gain, offset = (uniform(0.85, 1.15), uniform(-0.1, 0.1)) if uniform(0, 1) < 0.3 else (1.0, 0.0)
        return PatchParams(i, corner, flips, params.rot90, noise, noise_seed, blur, gain, offset)

    def _batch(self, pairs: Sequence[SRPair], params: Sequence[PatchParams]) -> Batch:
        cut = [cut_patch(pairs[p.pair], p, self.lr_patch, self.scale) for p in params]
        lr = torch.from_numpy(np.stack([c[0] for c in cut])[:, None])
        hr = torch.from_numpy(np.stack([c[1] for c in cut])[:, None])
        if self.slices:  # (B, 1, X, Y, 2n+1) -> LR (B, 2n+1, X, Y) and the centre HR slice (B, 1, X, Y)
            lr, hr = lr[:, 0].permute(0, 3, 1, 2).contiguous(), hr[..., self.context].contiguous()
        return Batch(lr, hr, torch.zeros(len(params), dtype=torch.long))

    def sample(self, batch_size: int, generator: torch.Generator) -> Batch:
        return self._batch(self.pairs, [self.sample_params(generator, self.pairs) for _ in range(batch_size)])

    def validation_batches(self) -> list[Batch]:
        if self._val is None:
            g = torch.Generator().manual_seed(12345)
            saved, self.augment = self.augment, False
            try:
                self._val = [self._batch(self.val_pairs, [self.sample_params(g, self.val_pairs) for _ in range(2)])
                             for _ in range(self.val_patches)]
            finally:
                self.augment = saved
        return self._val


def split_validation(pairs: Sequence[SRPair]) -> tuple[list[SRPair], list[SRPair]]:
    """Hold out the last eighth of the pairs (at least one when there are two or more) for validation.

    With a single pair, validation patches come from the same volume (stated in the run's log).
    """
    pairs = list(pairs)
    if len(pairs) < 2:
        return pairs, []
    n_val = max(1, len(pairs) // 8)
    return pairs[:-n_val], pairs[-n_val:]
