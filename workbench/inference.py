"""Whole-volume inference: tile -> predict -> stitch, edge maps and attention maps.

Memory stays bounded for any volume size: the network only ever sees tiles of
``tile`` voxels per axis, overlapping by ``overlap`` voxels and blended with a
separable linear ramp so seams do not show.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from workbench.allocator import reuse_large_buffers
from workbench.config import Config
from workbench.data.dwi import DWISubject, prepare_subject
from workbench.training.distributed import resolve_device
from workbench.training.schedules import amp_settings
from workbench.io_utils import InputError
from workbench.tiling import ramp_weights, tile_layout
from workbench.rician import rician_noise_stats  # noqa: F401  (re-exported: benchmarks use it from here)
from workbench.blend import (  # noqa: F401  (re-exported: benchmarks and tests use them from here)
    MIN_SURE_VOXELS, PLAUSIBLE_WEIGHTS, blend_with_mppca, blend_work, can_blend, mppca_with_divergence)

ProgressFn = Callable[[int, int], None]

#: Buffers up to this size are reused from the heap while the network runs (``reuse_large_buffers``);
#: larger ones (a tile's many-channel input and its bfloat16 copy) are mapped and unmapped afresh, so
#: the heap does not keep their holes: on a 128x128x80x65 series with tiles of at most 262,144 voxels,
#: 0.11 GB less peak than with 256 MB (whole process, median of 4 runs; README, "DWI at clinical size").
NETWORK_MMAP_THRESHOLD = 32 << 20


@torch.no_grad()
def predict_tiled(
    model: torch.nn.Module,
    image: torch.Tensor,
    cond: int,
    *,
    tile: int = 64,
    overlap: int = 16,
    device: torch.device | str = "cpu",
    amp: bool = True,
    amp_dtype: torch.dtype = torch.bfloat16,
    max_voxels: Optional[int] = None,
) -> torch.Tensor:
    """Run ``model`` over a (C, X, Y, Z) image in overlapping tiles; returns (C_out, X, Y, Z) float32 on CPU.

    The tiles are laid out by :func:`workbench.tiling.tile_layout`: edges at most ``tile``, at most
    ``max_voxels`` voxels each (a bound on the working memory), the least work within both.

    ``image`` is a tensor or anything with its ``shape`` and ``image[:, region]`` (e.g.
    :class:`workbench.data.dwi.LazyInput`, which builds each tile's input on demand).

    Freed tile-sized buffers are reused rather than page-faulted afresh for every op
    (:func:`workbench.allocator.reuse_large_buffers`).
    """
    with reuse_large_buffers(NETWORK_MMAP_THRESHOLD):
        return _predict_tiled(model, image, cond, tile, overlap, torch.device(device), amp, amp_dtype, max_voxels)


def _predict_tiled(model, image, cond, tile, overlap, device, amp, amp_dtype, max_voxels) -> torch.Tensor:
    size = image.shape[1:]
    layout = tile_layout(size, tile, overlap, max_voxels)
    tiles = [t for t, _ in layout]
    ov = [min(overlap, t // 2) for t in tiles]
    starts = [st for _, st in layout]
    out = acc = None
    cond_t = torch.tensor([cond], dtype=torch.long, device=device)
    for corner in itertools.product(*starts):
        region = tuple(slice(c, c + t) for c, t in zip(corner, tiles))
        x = image[(slice(None),) + region].unsqueeze(0).to(device)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            y = model(x, cond_t)
        y = y.float()[0].cpu()
        if out is None:
            out = torch.zeros((y.shape[0],) + tuple(size))
            acc = torch.zeros(tuple(size))
        w = [
            ramp_weights(t, o, c == 0, c + t >= s)
            for c, t, o, s in zip(corner, tiles, ov, size)
        ]
        weight = w[0][:, None, None] * w[1][None, :, None] * w[2][None, None, :]
        out[(slice(None),) + region] += y * weight
        acc[region] += weight
    return out / acc.clamp_min(1e-8)


@dataclass
class DenoiseOutput:
    """Denoised (X, Y, Z, N) series in input units and the held-out quality estimate.

    ``heldout_mse`` is the mean squared difference, inside the mask, between each
    volume's J-invariant prediction and the noisy volume it never saw: it
    estimates (error to the noise-free magnitude mean)^2 + noise variance. The
    Rician noise variance is below sigma^2 where the signal is low, so with a
    sigma it is computed per voxel from the prediction and subtracted, and the
    squared Rician bias of the prediction is added. ``est_rmse`` estimates the
    output's RMSE to the clean signal without a reference (:mod:`workbench.error_estimate`:
    the blend's SURE value carried through the Rician inversion), ``est_per_shell`` the same per
    shell with a ``flagged`` mark where it may be low. ``shrinkage`` holds the per-volume weight
    given to the noisy volume (empty when not applied).
    """

    denoised: np.ndarray
    heldout_mse: float
    sigma_upper: float
    mask: np.ndarray
    heldout_per_volume: np.ndarray = None  # type: ignore[assignment]
    shrinkage: np.ndarray = None  # type: ignore[assignment]
    sigma: Optional[float] = None
    est_rmse: Optional[float] = None
    raw: Optional[np.ndarray] = None
    blend_weights: Optional[np.ndarray] = None
    est_per_shell: Optional[list] = None


class Denoiser:
    """A trained J-invariant DWI denoiser bound to a device.

    Parameters
    ----------
    model : torch.nn.Module
        Network taking ``(input, volume_index)``.
    config : Config
        The run's configuration (data settings decide the input layout).
    n_volumes : int
        Number of diffusion volumes the model was trained for.
    """

    def __init__(self, model: torch.nn.Module, config: Config, n_volumes: int,
                 device: str | torch.device = "auto", amp: Optional[bool] = None):
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.n_volumes = n_volumes
        train_cfg = config.train if amp is None else config.train.model_copy(update={"amp": amp})
        self.amp, self.amp_dtype, _ = amp_settings(train_cfg, self.device)
        self.tile, self.overlap = config.inference.tile, config.inference.overlap
        self.tile_voxels = config.inference.tile_voxels

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str = "auto", amp: Optional[bool] = None) -> "Denoiser":
        """Load a ``best.pt``/``last.pt`` written by the trainer (``weights_only=True``)."""
        from workbench.models import build_model
        from workbench.training.checkpoint import load_checkpoint
        from workbench.training.ema import model_weights

        ckpt = load_checkpoint(path)
        config = Config.model_validate(ckpt["config"])
        meta = ckpt.get("model_meta") or {}
        task = ckpt.get("task_meta") or {}
        if task.get("task", "dwi") not in ("dwi", "dwi_denoise"):
            raise InputError(f"checkpoint {path} is for task '{task.get('task')}', not DWI denoising")
        model = build_model(config.model, in_channels=meta["in_channels"], out_channels=meta["out_channels"],
                            num_conditions=meta["num_conditions"], residual_channel=meta.get("residual_channel"))
        try:
            model.load_state_dict(model_weights(ckpt))
        except RuntimeError as exc:
            raise InputError(f"checkpoint {path} does not match model '{config.model.name}': {exc}") from exc
        return cls(model, config, int(task.get("n_volumes", meta["num_conditions"])), device, amp)

    def check_series(self, n_volumes: int) -> None:
        if n_volumes != self.n_volumes:
            raise InputError(
                f"checkpoint was trained for model '{self.config.model.name}' with {self.n_volumes} volumes; "
                f"this data has {n_volumes} volumes: train a new model or pick the matching checkpoint"
            )

    def prepare(self, data: np.ndarray, bvals, bvecs, mask: Optional[np.ndarray] = None,
                progress: Optional[ProgressFn] = None, overwrite_input: bool = False) -> DWISubject:
        self.check_series(data.shape[-1])
        return prepare_subject(data, bvals, bvecs, self.config.data, mask=mask, progress=progress,
                               overwrite_input=overwrite_input)

    def predict_volume(self, subject: DWISubject, j: int) -> torch.Tensor:
        """Held-out prediction of volume ``j`` (normalised units), (X, Y, Z)."""
        image = subject.lazy_input(j)
        return predict_tiled(self.model, image, j, tile=self.tile, overlap=self.overlap, device=self.device,
                             amp=self.amp, amp_dtype=self.amp_dtype, max_voxels=self.tile_voxels)[0]

    def denoise(self, data: np.ndarray, bvals=None, bvecs=None, mask: Optional[np.ndarray] = None,
                progress: Optional[ProgressFn] = None, sigma: Optional[float] = None,
                subject: Optional[DWISubject] = None, keep_raw: bool = False,
                prepare_progress: Optional[ProgressFn] = None, release_priors: bool = False,
                overwrite_input: bool = False) -> DenoiseOutput:
        """Denoise every volume of a (X, Y, Z, N) series.

        Each volume gets its J-invariant prediction; with a noise ``sigma``
        (input units) :func:`post_process` then applies what ``config.inference``
        asks for (shrinkage toward the noisy volume, Rician mean inversion, the
        free-water floor). ``subject`` reuses a series already prepared for
        training (same data); ``keep_raw`` also returns the J-invariant
        predictions before post-processing (input units, (X, Y, Z, N)). ``prepare_progress``
        follows the q-space priors when the series is prepared here. The priors are
        released once every volume is predicted when the series is prepared here or
        ``release_priors`` is set (the caller's ``subject`` then has no network input left).
        ``overwrite_input`` lets the preparation normalise a float32 C-ordered ``data`` in place and work
        on it (one copy of the series less; ``data`` holds the normalised series afterwards).
        """
        icfg = self.config.inference
        if subject is None:
            subject = self.prepare(data, bvals, bvecs, mask, prepare_progress, overwrite_input)
            release_priors = True
        else:
            self.check_series(subject.n_volumes)
            if not subject.has_priors:
                raise InputError("this prepared series' priors were released by an earlier denoise(..., "
                                 "release_priors=True): prepare it again")
        n = subject.n_volumes
        brain = subject.mask
        preds = np.empty((n,) + data.shape[:3], dtype=np.float32)
        # the MP-PCA runs of the blend report on the same bar, so it is known from the start how much is left
        blend_units = 0
        if progress is not None and sigma is not None and icfg.mppca_blend and can_blend(data.shape[:3], n):
            blend_units = blend_work(data.shape[:3], brain.numpy(), icfg.mppca_stride, icfg.divergence_voxels,
                                     icfg.mppca_lattice)
        heldout = np.empty(n)
        # outside the brain mask the prediction is the input (not the priors' extrapolated grey, with a ring at
        # the edge); the MP-PCA blend then replaces it with MP-PCA there, or, without the blend, only the Rician
        # correction changes it (air goes to ~0 as its clean signal does)
        outside = ~brain
        with reuse_large_buffers(NETWORK_MMAP_THRESHOLD):  # one setting for the whole loop: no trim between volumes
            for done, j in enumerate(subject.prediction_order(), start=1):
                pred = torch.where(outside, subject.volumes[j], self.predict_volume(subject, j))
                heldout[j] = float(((pred - subject.volumes[j])[brain].double() ** 2).mean())
                preds[j] = pred.numpy()
                if release_priors:  # the priors (and a finished fold's denoised volumes) shrink as the predictions grow
                    subject.release_volume_priors(j)
                if progress is not None:
                    progress(done, n + blend_units)
        if release_priors:
            subject.release_priors()
        raw = np.moveaxis(preds, 0, -1) * np.float32(subject.scale) if keep_raw else None
        sig = None if sigma is None else sigma / subject.scale
        noise_var = np.full(n, np.nan)
        if sig is not None:
            noise_var, _ = rician_noise_stats(preds, brain.numpy(), sig)
        noisy = subject.volumes.numpy()  # (N, X, Y, Z) view of the (X, Y, Z, N) series MP-PCA reads in place
        weights, risk = None, None
        if sig is not None and icfg.mppca_blend:
            mp = None
            if can_blend(data.shape[:3], n):  # MP-PCA's planes count on the same bar; a cancel stops between them
                mp = mppca_with_divergence(
                    noisy, sig, brain.numpy(), stride=icfg.mppca_stride, divergence_voxels=icfg.divergence_voxels,
                    lattice=icfg.mppca_lattice,
                    progress=None if progress is None else (lambda done, total: progress(n + done, n + total)))
            blended = blend_with_mppca(preds, noisy, noise_var, brain.numpy(), sig, subject.bvals,
                                       include_noisy=icfg.shrinkage, mppca=mp, overwrite=True)
            del mp
            if blended is not None:
                preds, weights, risk = blended
            del blended
        means = preds
        preds, k = post_process(preds, noisy, heldout, noise_var, sig, subject.bvals,
                                shrinkage=icfg.shrinkage and weights is None,
                                rician_correction=icfg.rician_correction, free_water_floor=icfg.free_water_floor)
        mse = float(heldout.mean()) * subject.scale**2
        est, shells = None, None
        if sig is not None:  # SURE of the blend, or the held-out risk, carried through the Rician inversion
            from workbench.error_estimate import estimate_output_error

            volume_risk = risk if risk is not None else heldout - noise_var
            est, shells = estimate_output_error(means, volume_risk, preds, sig, brain.numpy(), subject.bvals,
                                                rician_correction=icfg.rician_correction,
                                                free_water_floor=icfg.free_water_floor)
            est *= subject.scale
            for row in shells:
                row["rmse"] *= subject.scale
        del means, noisy
        # in place (the arrays are this function's own): (X, Y, Z, N) is a view of the (N, X, Y, Z) result
        out = np.moveaxis(np.clip(preds, 0.0, None, out=preds), 0, -1)
        out *= np.float32(subject.scale)
        return DenoiseOutput(out.astype(np.float32, copy=False), mse, float(np.sqrt(mse)), subject.mask.numpy(),
                             heldout * subject.scale**2, k, sigma, est, raw, weights, shells)

    def attention_maps(self, subject: DWISubject, j: int) -> dict[str, np.ndarray]:
        """CBAM spatial attention of every block for volume ``j`` over the whole volume, (X, Y, Z) each."""
        from workbench.models import collect_attention_maps

        image = subject.network_input(j).unsqueeze(0).to(self.device)
        cond = torch.tensor([j], device=self.device)
        maps = collect_attention_maps(self.model, image, cond)
        return {name: m.float()[0, 0].cpu().numpy() for name, m in maps.items()}


#: Diffusivity of free water at body temperature (mm^2/s): no tissue signal decays faster.
FREE_WATER_DIFFUSIVITY = 3.0e-3


class FreeWaterFloor:
    """The free-water floor ``S0 exp(-b D_free)`` of a series, one (X, Y, Z) volume at a time:
    ``floor[j]`` (``-inf`` on the b0 volumes), ``len(floor)``; ``S0`` is the voxel's mean b0.
    Only S0 is held, not a floor the size of the series."""

    def __init__(self, volumes: np.ndarray, bvals, b0: np.ndarray) -> None:
        self.s0 = np.maximum(np.mean([volumes[k] for k in np.flatnonzero(b0)], axis=0, dtype=np.float64),
                             0.0).astype(np.float32)
        self.factor = np.where(b0, -np.inf, np.exp(-np.asarray(bvals, np.float64) * FREE_WATER_DIFFUSIVITY))

    def __len__(self) -> int:
        return len(self.factor)

    def __getitem__(self, j: int) -> np.ndarray:
        if np.isneginf(self.factor[j]):
            return np.full(self.s0.shape, -np.inf, dtype=np.float32)
        return np.float32(self.factor[j]) * self.s0


def free_water_floor(volumes: np.ndarray, bvals, b0_threshold: float = 50.0) -> Optional[FreeWaterFloor]:
    """The lower bound ``S0 exp(-b D_free)`` of each (N, X, Y, Z) volume (:class:`FreeWaterFloor`,
    indexed per volume), ``-inf`` on the b0 volumes; ``S0`` is the voxel's mean b0. None without
    b-values or b0 volumes (or with b0 volumes only)."""
    if bvals is None:
        return None
    bvals = np.asarray(bvals, dtype=np.float64)
    b0 = bvals <= b0_threshold
    if not b0.any() or b0.all():
        return None
    return FreeWaterFloor(volumes, bvals, b0)


def apply_free_water_floor(volumes: np.ndarray, bvals, b0_threshold: float = 50.0,
                           out: Optional[np.ndarray] = None) -> np.ndarray:
    """Clamp (N, X, Y, Z) diffusion-weighted volumes from below at ``S0 exp(-b D_free)``.

    ``S0`` is the voxel's mean b0. A signal below the free-water decay is
    physically impossible, and values near 0 (what Rician mean inversion gives
    in CSF at high b) make a tensor fit's log-signal explode, so MD and FA in
    CSF go wild. Returns the input unchanged without b-values or b0 volumes, else
    a new array (or ``out``, which may be ``volumes`` itself), filled volume by volume.
    """
    floor = free_water_floor(volumes, bvals, b0_threshold)
    if floor is None:
        return volumes
    out = np.empty_like(volumes) if out is None else out
    for j in range(len(volumes)):
        np.maximum(volumes[j], floor[j], out=out[j], dtype=volumes.dtype, casting="unsafe")
    return out


def post_process(preds: np.ndarray, noisy: np.ndarray, heldout: np.ndarray, noise_var: np.ndarray,
                 sigma: Optional[float], bvals=None, *, shrinkage: bool = True, rician_correction: bool = True,
                 free_water_floor: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Turn (N, X, Y, Z) J-invariant predictions into the final estimate; returns it and the shrinkage weights.

    1. shrinkage: ``f + k (y - f)``, ``k = 1 - var_noise / heldout_mse`` per volume (the
       Wiener weight between the prediction, error ``heldout - var_noise``, and the
       noisy volume, error ``var_noise``), from Noise2Self's view of the held-out
       loss (Batson & Royer 2019);
    2. Rician mean inversion with ``sigma`` (Koay & Basser 2006);
    3. the free-water floor (:func:`apply_free_water_floor`).

    Steps 1 and 2 need ``sigma`` (same units as ``preds``) and are skipped without it.
    """
    from workbench.rician import invert_rician_mean

    k = np.zeros(0)
    own = False  # whether ``preds`` is an array made here (then the floor is applied in place)
    if sigma is not None and shrinkage:
        k = np.clip(1.0 - noise_var / np.maximum(heldout, 1e-12), 0.0, 1.0)
        shrunk = np.empty_like(preds)
        for j in range(len(preds)):  # volume by volume: no series-sized temporaries
            shrunk[j] = preds[j] + np.float32(k[j]) * (noisy[j] - preds[j])
        preds, own = shrunk, True
    if sigma is not None and rician_correction:
        preds, own = invert_rician_mean(preds, sigma), True
    if free_water_floor:
        preds = apply_free_water_floor(preds, bvals, out=preds if own else None)
    return preds, k


def edge_map(volume: np.ndarray) -> np.ndarray:
    """3D Sobel gradient magnitude of a (X, Y, Z) volume: the same operator the edge loss uses."""
    from workbench.losses import sobel_magnitude_3d

    x = torch.as_tensor(np.asarray(volume, dtype=np.float32))[None, None]
    return sobel_magnitude_3d(x)[0, 0].numpy()
