"""What every front end calls: simulate, train, denoise, evaluate, baseline.

The CLI, the napari plugin and the notebooks are thin layers over these
functions; none of them re-implements a step.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from workbench.allocator import trim_heap
from workbench.config import Config, load_config
from workbench.data.dwi import DWIPatchSampler, DWISubject, compute_mask, prepare_subject
from workbench.data.nifti import (
    DWISeries,
    ensure_distinct_output,
    load_dwi,
    load_volume,
    save_dwi,
    strip_nifti_suffix,
)
from workbench.io_utils import InputError, atomic_write_text
from workbench.training.events import Callback

PathLike = str | os.PathLike


def simulate(out_dir: PathLike, snr: float = 20.0, seed: int = 0, scheme: str = "multishell",
             shape: tuple[int, int, int] = (64, 64, 32)) -> dict[str, Path]:
    """Write a DWI phantom with ground truth: dwi, bval, bvec, clean, mask (and tissue labels)."""
    from workbench.data.phantoms import simulate_dwi, write_phantom

    return write_phantom(simulate_dwi(shape=shape, scheme=scheme, snr=snr, seed=seed), out_dir)


def resolve_config(config: Config | PathLike | None) -> Config:
    if config is None:
        return Config()
    if isinstance(config, Config):
        return config
    return load_config(config)


def load_mask(mask: PathLike | np.ndarray | None, shape: tuple[int, ...]) -> Optional[np.ndarray]:
    """A mask from a file or array, checked against the series' spatial shape."""
    if mask is None:
        return None
    if isinstance(mask, np.ndarray):
        arr = mask
    else:
        arr, _, _ = load_volume(mask, "mask file")
    arr = np.asarray(arr)
    if arr.ndim == 4 and arr.shape[3] == 1:
        arr = arr[..., 0]
    if arr.shape != tuple(shape):
        raise InputError(f"mask shape {arr.shape} does not match the DWI's spatial shape {tuple(shape)}")
    return arr > 0


def model_meta_for(config: Config, subject: DWISubject) -> dict:
    return {
        "name": config.model.name,
        "in_channels": subject.in_channels,
        "out_channels": 1,
        "num_conditions": subject.n_volumes,
        # the first prior is the network's starting point: it learns a correction to it
        "residual_channel": 0 if subject.n_priors > 0 else None,
    }


def make_trainer(
    series: Sequence[DWISeries],
    out_dir: Optional[PathLike],
    config: Config,
    *,
    masks: Optional[Sequence[Optional[np.ndarray]]] = None,
    callbacks: Iterable[Callback] = (),
    loss_weights=None,
    progress: Optional[Callable[[int, int], None]] = None,
    overwrite_input: bool = False,
):
    """Prepare the data, build the model and return a ready :class:`~workbench.training.trainer.Trainer`.

    Front ends that need to stop training or change loss weights while it runs
    keep the returned trainer (``request_stop()``, ``loss_weights.set()``).
    ``progress(done, total)`` follows the preparation of the q-space priors (MP-PCA planes of patch centres per fold).
    ``overwrite_input``: each series' float32 data is normalised in place and trained on (no copy; see
    :func:`workbench.data.dwi.prepare_subject`).
    """
    from workbench.models import build_model
    from workbench.tasks.dwi.objective import jinvariant_step
    from workbench.training.trainer import Trainer

    masks = list(masks) if masks is not None else [None] * len(series)
    subjects = []
    for i, (s, m) in enumerate(zip(series, masks)):
        part = None if progress is None else (lambda d, t, i=i: progress(i * t + d, len(series) * t))
        subjects.append(prepare_subject(s.data, s.bvals, s.bvecs, config.data, mask=m, progress=part,
                                        overwrite_input=overwrite_input))
    sampler = DWIPatchSampler(subjects, patch_size=config.data.patch_size, augment=config.data.augment)
    meta = model_meta_for(config, subjects[0])
    torch.manual_seed(config.train.seed)
    model = build_model(config.model, in_channels=meta["in_channels"], out_channels=1,
                        num_conditions=meta["num_conditions"], residual_channel=meta["residual_channel"])
    task_meta = {
        "task": "dwi",
        "n_volumes": subjects[0].n_volumes,
        "n_priors": subjects[0].n_priors,
        "scale": subjects[0].scale,
        "bvals": None if subjects[0].bvals is None else [float(b) for b in subjects[0].bvals],
    }
    trainer = Trainer(model, sampler, config, out_dir=out_dir, callbacks=tuple(callbacks),
                      loss_weights=loss_weights, model_meta=meta, task_meta=task_meta, step=jinvariant_step)
    trainer.subjects = subjects  # kept for front ends that preview predictions
    return trainer


def train(
    dwi_paths: Sequence[PathLike],
    out_dir: PathLike,
    config: Config | PathLike | None = None,
    *,
    resume: bool = False,
    callbacks: Iterable[Callback] = (),
    mask_paths: Optional[Sequence[Optional[PathLike]]] = None,
    nan_to_zero: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
):
    """Train a J-invariant denoiser on one or more DWI series; checkpoints go to ``out_dir``.

    ``progress(done, total)`` follows the q-space priors prepared before training starts.
    """
    config = resolve_config(config)
    if resume and not (Path(out_dir) / "last.pt").is_file():  # before minutes of data preparation
        raise InputError(f"no last.pt in {out_dir}: start without --resume")
    if nan_to_zero:
        config.data.nan_to_zero = True
    series = [load_dwi(p, nan_to_zero=config.data.nan_to_zero) for p in dwi_paths]
    masks = [load_mask(m, s.spatial_shape) for s, m in
             zip(series, mask_paths or [None] * len(series))]
    trainer = make_trainer(series, out_dir, config, masks=masks, callbacks=callbacks, progress=progress,
                           overwrite_input=True)  # the series are this function's own
    return trainer.fit(resume=resume)


@dataclass
class DenoiseReport:
    """What ``workbench denoise`` did and how good it thinks the result is (no reference needed)."""

    output: str
    n_volumes: int
    trained_steps: int
    train_seconds: float
    inference_seconds: float
    heldout_mse: float
    sigma_upper: float
    sigma: Optional[float]  # the noise sigma used: config, background air, or MP-PCA (extra["sigma_source"])
    est_rmse_vs_clean: Optional[float]
    device: str
    amp: bool
    checkpoint: Optional[str] = None
    extra: dict = field(default_factory=dict)
    #: the estimate per shell: [{"b", "volumes", "rmse", "near_floor", "flagged"}] (workbench.error_estimate)
    est_rmse_per_shell: Optional[list] = None
    #: set where a shell's estimate may be low (signal near the noise floor); shown beside the estimate
    est_warning: Optional[str] = None


def noise_sigma(series: DWISeries, mask: Optional[np.ndarray], config: Config) -> tuple[Optional[float], Optional[str]]:
    """The noise sigma ``workbench denoise`` uses, and where it came from ("config", "background", "mppca").

    ``config.inference.sigma`` if set; else the Rayleigh statistics of the air around the head; else (a field of
    view cropped to the head) MP-PCA's Marchenko-Pastur fit; else ``(None, None)``.
    """
    from workbench.baselines import estimate_background_sigma, estimate_sigma_mppca

    if config.inference.sigma is not None:
        return config.inference.sigma, "config"
    sigma_mask = mask if mask is not None else compute_mask(series.data, series.bvals)
    sigma = estimate_background_sigma(series.data, sigma_mask)
    if sigma is not None:
        return sigma, "background"
    sigma = estimate_sigma_mppca(series.data, sigma_mask)
    return (sigma, "mppca") if sigma is not None else (None, None)


def denoise_series(
    series: DWISeries,
    *,
    checkpoint: Optional[PathLike] = None,
    config: Config | PathLike | None = None,
    mask: Optional[np.ndarray] = None,
    device: Optional[str] = None,
    amp: Optional[bool] = None,
    run_dir: Optional[PathLike] = None,
    callbacks: Iterable[Callback] = (),
    progress: Optional[Callable[[int, int], None]] = None,
    prepare_progress: Optional[Callable[[int, int], None]] = None,
    consume: bool = False,
) -> tuple[np.ndarray, DenoiseReport]:
    """Denoise an in-memory series; returns the (X, Y, Z, N) result in input units and a report.

    ``prepare_progress`` follows the q-space priors before training, ``progress`` the prediction
    (with a checkpoint the priors are prepared inside the prediction and count on ``progress``).
    ``consume``: the series' data (float32) becomes the working copy, normalised in place, so the
    series is held once instead of twice; ``series.data`` is not the input any more afterwards.
    """
    from workbench.inference import Denoiser

    steps = 0
    subject = None
    if checkpoint is not None:
        if config is not None:
            raise InputError("--config and --checkpoint exclude each other: the checkpoint carries its config")
        denoiser = Denoiser.from_checkpoint(checkpoint, device=device or "auto", amp=amp)
        # measured before the preparation may normalise the data in place (``consume``)
        sigma, sigma_source = noise_sigma(series, mask, denoiser.config)
        t0 = time.perf_counter()
    else:
        cfg = resolve_config(config).model_copy(deep=True)
        if device is not None:
            cfg.train.device = device
        if amp is not None:
            cfg.train.amp = amp
        sigma, sigma_source = noise_sigma(series, mask, cfg)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory(prefix="workbench-run-") as tmp:
            trainer = make_trainer([series], run_dir or tmp, cfg, masks=[mask], callbacks=callbacks,
                                   progress=prepare_progress, overwrite_input=consume)
            result = trainer.fit()
            steps = result.steps_done
            best = Path(result.best_checkpoint or result.last_checkpoint)
            denoiser = Denoiser.from_checkpoint(best, device=cfg.train.device, amp=cfg.train.amp)
            subject = trainer.subjects[0]  # same data and mask: its priors need not be computed twice
            del trainer, result  # the model, optimizer and batches of training are not needed to denoise
            gc.collect()  # the trainer may sit in reference cycles (callbacks)
            trim_heap()  # and the heap training freed goes back to the OS before the predictions are allocated
    t_train = time.perf_counter() - t0
    t1 = time.perf_counter()
    out = denoiser.denoise(series.data, series.bvals, series.bvecs, mask, progress=progress, sigma=sigma,
                           subject=subject, prepare_progress=prepare_progress, release_priors=True,
                           overwrite_input=consume)
    t_inf = time.perf_counter() - t1
    report = DenoiseReport(
        output="", n_volumes=series.n_volumes, trained_steps=steps, train_seconds=t_train,
        inference_seconds=t_inf, heldout_mse=out.heldout_mse, sigma_upper=out.sigma_upper,
        sigma=sigma, est_rmse_vs_clean=out.est_rmse, device=str(denoiser.device), amp=denoiser.amp,
        checkpoint=None if checkpoint is None else str(checkpoint),
        extra={"shrinkage_mean": float(out.shrinkage.mean()) if out.shrinkage.size else None,
               "blend_weights_mean": None if out.blend_weights is None else
               dict(zip(("network", "mppca", "noisy"), out.blend_weights.mean(axis=0).round(4).tolist())),
               "rician_correction": bool(sigma is not None and denoiser.config.inference.rician_correction),
               "sigma_source": sigma_source},
        est_rmse_per_shell=out.est_per_shell, est_warning=estimate_warning(out.est_per_shell),
    )
    return out.denoised, report


def estimate_warning(shells: Optional[list]) -> Optional[str]:
    """The warning that goes beside an estimate with a flagged shell (None when none is flagged)."""
    from workbench.error_estimate import LOW_WARNING, any_flagged

    if not any_flagged(shells):
        return None
    flagged = ", ".join(f"b={r['b']:.0f}" for r in shells if r["flagged"])
    return f"* {flagged}: {LOW_WARNING}; the overall figure inherits it"


def denoise(
    dwi_path: PathLike,
    out_path: PathLike,
    *,
    checkpoint: Optional[PathLike] = None,
    config: Config | PathLike | None = None,
    mask: PathLike | None = None,
    bval: Optional[PathLike] = None,
    bvec: Optional[PathLike] = None,
    device: Optional[str] = None,
    amp: Optional[bool] = None,
    nan_to_zero: bool = False,
    run_dir: Optional[PathLike] = None,
    callbacks: Iterable[Callback] = (),
    progress: Optional[Callable[[int, int], None]] = None,
    prepare_progress: Optional[Callable[[int, int], None]] = None,
) -> DenoiseReport:
    """Denoise a 4D DWI file: train on the data itself (no clean data needed) or apply ``checkpoint``.

    The output keeps the input's affine and header; bval/bvec are copied beside
    it and the report is written as ``OUT.json``. The held-out mean squared
    error (each volume predicted without seeing it) estimates error-to-clean +
    sigma^2, so ``sigma_upper`` bounds the noise level and, with a background
    sigma, ``est_rmse_vs_clean`` estimates quality without a reference.
    """
    out_path = ensure_distinct_output(out_path, dwi_path, mask, bval, bvec)
    series = load_dwi(dwi_path, bval, bvec, nan_to_zero=nan_to_zero)
    mask_arr = load_mask(mask, series.spatial_shape)
    denoised, report = denoise_series(series, checkpoint=checkpoint, config=config, mask=mask_arr, device=device,
                                      amp=amp, run_dir=run_dir, callbacks=callbacks, progress=progress,
                                      prepare_progress=prepare_progress, consume=True)
    save_dwi(out_path, series, denoised)
    report.output = str(out_path)
    atomic_write_text(strip_nifti_suffix(out_path).with_suffix(".json"), json.dumps(asdict(report), indent=2))
    return report


def evaluate(
    pred_path: PathLike,
    reference_path: PathLike,
    *,
    mask: PathLike | None = None,
    bval: Optional[PathLike] = None,
    bvec: Optional[PathLike] = None,
) -> dict[str, float]:
    """PSNR/SSIM/RMSE in the mask over DW volumes and all, FA/MD error: see :func:`workbench.metrics.evaluate_dwi`."""
    from workbench.data.nifti import volume_shape
    from workbench.metrics import evaluate_dwi

    shapes = {p: volume_shape(p, what) for p, what in ((pred_path, "result"), (reference_path, "reference"))}
    if shapes[pred_path] != shapes[reference_path]:  # say so before any DWI-specific check of either file
        raise InputError(f"{Path(pred_path).name} has shape {shapes[pred_path]} but the reference "
                         f"{Path(reference_path).name} has {shapes[reference_path]}: compare the same series")
    pred = load_dwi(pred_path, bval, bvec, require_gradients=False)
    ref = load_dwi(reference_path, bval, bvec, require_gradients=False)
    bvals = pred.bvals if pred.bvals is not None else ref.bvals
    bvecs = pred.bvecs if pred.bvecs is not None else ref.bvecs
    if bvals is None or bvecs is None:
        raise InputError("evaluate needs the gradient table: put .bval/.bvec beside a file or pass --bval/--bvec")
    if pred.data.shape != ref.data.shape:
        raise InputError(f"{Path(pred_path).name} has shape {pred.data.shape} but the reference has "
                         f"{ref.data.shape}: compare the same series")
    mask_arr = load_mask(mask, pred.spatial_shape)
    return evaluate_dwi(pred.data, ref.data, bvals, bvecs, mask_arr)


def baseline(name: str, dwi_path: PathLike, out_path: PathLike, *, mask: PathLike | None = None,
             bval: Optional[PathLike] = None, bvec: Optional[PathLike] = None,
             nan_to_zero: bool = False) -> dict:
    """Run a DIPY method (mppca, patch2self, nlmeans) through the same I/O as ``denoise``."""
    from workbench.baselines import BASELINES, run_baseline

    if name not in BASELINES:
        raise InputError(f"unknown baseline '{name}'; known baselines: {', '.join(sorted(BASELINES))}")
    out_path = ensure_distinct_output(out_path, dwi_path, mask, bval, bvec)
    series = load_dwi(dwi_path, bval, bvec, nan_to_zero=nan_to_zero)
    mask_arr = load_mask(mask, series.spatial_shape)
    t0 = time.perf_counter()
    out = run_baseline(name, series.data, series.bvals, mask=mask_arr)
    seconds = time.perf_counter() - t0
    save_dwi(out_path, series, out)
    return {"output": str(out_path), "method": name, "seconds": seconds}


def snapshot_denoiser(trainer, device: Optional[str] = None):
    """A :class:`~workbench.inference.Denoiser` from a copy of a (possibly running) trainer's model.

    The copy is taken now; training goes on unaffected. Front ends use it to
    preview the model being trained.
    """
    import copy

    from workbench.inference import Denoiser

    model = copy.deepcopy(trainer.raw_model)
    return Denoiser(model, trainer.config, trainer.subjects[0].n_volumes, device=device or trainer.device)
